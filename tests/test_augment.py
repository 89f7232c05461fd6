"""The augmentation keys: data.crop_scale, data.flip, data.rotate, zoom, warp, brightness, contrast do what they
say, on the PIL path and in the image cache, and the two paths draw the same augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_class_folders
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from vggtune.core.errors import UserError
from vggtune.data.augment import Augment, LookDrawer, apply_look, identity_look
from vggtune.data.image_cache import CachedImageDataset, build_cache, device_transform
from vggtune.data.transforms import check_augment, train_transform
from vggtune.model.arch import preprocessing


def _ramp() -> Image.Image:
    """Dark on the left, bright on the right: a mirror flip reverses the columns' order."""
    a = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))
    return Image.fromarray(np.stack([a] * 3, -1).astype(np.uint8))


def _left_darker(x: torch.Tensor) -> bool:
    return bool(x[:, :, : x.shape[2] // 2].mean() < x[:, :, x.shape[2] // 2 :].mean())


@pytest.mark.parametrize("flip", [True, False])
def test_flip_false_never_mirrors_and_true_sometimes_does(flip):
    tf = train_transform(preprocessing("vgg11", 32), "crop", crop_scale=0.9, flip=flip)
    torch.manual_seed(0)
    mirrored = sum(not _left_darker(tf(_ramp())) for _ in range(40))
    assert (mirrored > 5) if flip else (mirrored == 0)


@pytest.mark.parametrize("scale", [0.1, 0.8])
def test_crop_scale_is_the_smallest_area_a_crop_keeps(scale):
    tf = train_transform(preprocessing("vgg11", 32), "crop", crop_scale=scale, flip=False)
    torch.manual_seed(0)
    # On the ramp, a crop's mean-column spread (max - min over its width) is its width's share of the image.
    widths = [float(x[0].mean(0).max() - x[0].mean(0).min()) for x in (tf(_ramp()) for _ in range(60))]
    small = min(widths) / max(widths)
    # area >= scale and aspect in [3/4, 4/3] -> width share >= sqrt(scale * 3/4)
    assert small >= np.sqrt(scale * 3 / 4) * 0.9
    if scale == 0.1:
        assert small < np.sqrt(0.8 * 3 / 4)  # small crops do happen


def test_the_image_cache_follows_crop_scale_and_flip(tmp_path):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=10, size=50)
    prep = preprocessing("vgg11", 32)
    paths = sorted(data.rglob("img_*"))
    cache = build_cache(paths, prep, tmp_path)
    for flip in (True, False):
        ds = CachedImageDataset(
            cache, [0] * len(paths), prep.resize_size, train=True, seed=1, crop_scale=0.9, flip=flip
        )
        items = [ds[i] for i in range(len(paths))]
        flips = sum(f for _, _, _, f, _ in items)
        assert (flips > 0) if flip else (flips == 0)
        side = prep.resize_size
        assert all((b[2] - b[0]) * (b[3] - b[1]) >= 0.9 * side * side - 2 * side for _, _, b, _, _ in items)


def test_a_levels_keys_are_its_own_unless_given():
    light, crop = check_augment("light"), check_augment("crop")
    assert (light.crop_scale, light.rotate, light.zoom, light.warp, light.brightness, light.contrast) == (
        1.0,
        10,
        1.1,
        0,
        0.2,
        0.2,
    )  # fastai's aug_transforms() defaults, without a crop and without the warp (issue 30's ablation)
    assert (crop.crop_scale, crop.rotate, crop.zoom, crop.warp, crop.brightness) == (0.35, 0, 1.0, 0, 0)
    mine = check_augment("light", crop_scale=0.8, flip=False, rotate=0, contrast=0.1)
    assert (mine.crop_scale, mine.flip, mine.rotate, mine.zoom, mine.contrast) == (0.8, False, 0, 1.1, 0.1)
    steps = {type(t).__name__ for t in train_transform(preprocessing("vgg11", 32), "light").transforms}
    assert steps >= {"RandomApply", "RandomHorizontalFlip"} and "RandomPerspective" not in steps
    warped = train_transform(preprocessing("vgg11", 32), "light", warp=0.2).transforms
    assert "RandomPerspective" in {type(t).__name__ for t in warped}  # data.warp=0.2 brings fastai's warp back


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"crop_scale": 0}, "data.crop_scale"),
        ({"crop_scale": 1.5}, "data.crop_scale"),
        ({"flip": "yes"}, "data.flip must be true or false"),
        ({"rotate": -5}, "data.rotate"),
        ({"zoom": 0.9}, "data.zoom"),
        ({"warp": 1.5}, "data.warp"),
        ({"affine_p": 2}, "data.affine_p"),
        ({"brightness": "a lot"}, "data.brightness"),
        ({"contrast": 1}, "data.contrast"),
    ],
)
def test_bad_augmentation_values_name_the_key(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        train_transform(preprocessing("vgg11", 32), "light", **kwargs)


def _smooth(size: int) -> torch.Tensor:
    """A float image in [0, 255] with no two pixels alike, so any shift of the sampling shows."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([200 * x + 20, 200 * y + 30, 120 + 100 * x * y]) + 0.0


@pytest.mark.parametrize(
    "steps",
    [
        {"rotate": 10},
        {"zoom": 1.3},
        {"warp": 0.3},
        {"brightness": 0.4, "contrast": 0.4},
        {"rotate": 10, "zoom": 1.1, "warp": 0.2, "brightness": 0.2, "contrast": 0.2},  # fastai's aug_transforms()
    ],
)
def test_the_devices_look_is_torchvisions_transforms_draw_for_draw(steps):
    """The image cache's rows, drawn from a seeded generator and applied to a batch, give the pixels that
    the PIL path's v2 transforms give one image at a time from the same seed (torchvision on tensors)."""
    prep = preprocessing("vgg11", 32)
    augment = Augment(**steps).check()
    drawer, image = LookDrawer(augment, 32), _smooth(32)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1) * 255
    geometry = v2.Compose(augment.geometry(fill=tuple(mean.flatten().tolist())) or [v2.Identity()])
    lighting = v2.Compose(augment.lighting() or [v2.Identity()])
    rows, expected = [], []
    for seed in range(12):
        torch.manual_seed(seed)
        rows.append(drawer())
        torch.manual_seed(seed)
        expected.append(lighting(tv_tensors.Image(geometry(tv_tensors.Image(image)) / 255)) * 255)
    out = apply_look(image.expand(12, -1, -1, -1), torch.stack(rows), mean)
    assert torch.allclose(out, torch.stack(expected), atol=0.05)
    assert sum(not torch.equal(r, identity_look()) for r in rows) >= 6  # p = 0.75: most images were changed


def _coordinates(side: int = 64) -> Image.Image:
    """Red is x, green is y, blue is 255: each output pixel of a transform says where it was sampled."""
    ramp = (np.arange(side) + 0.5) / side * 255
    x, y = np.meshgrid(ramp, ramp)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 255)], -1).round().astype(np.uint8))


def _crop_area_and_angle(x: torch.Tensor, prep) -> tuple[float, float, bool]:
    """From a normalised training view of :func:`_coordinates`: the input area it shows (a share of the image),
    its rotation in degrees and whether it is mirrored, by a least-squares affine fit of where its pixels came from."""
    rgb = x * torch.tensor(prep.std).view(3, 1, 1) + torch.tensor(prep.mean).view(3, 1, 1)
    side = rgb.shape[-1]
    v, u = torch.meshgrid(*(((torch.arange(side) + 0.5) / side).double(),) * 2, indexing="ij")
    keep = rgb[2] > 0.97  # not a rotated-in corner (filled with the mean)
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    design = torch.stack([u[keep], v[keep], torch.ones_like(u[keep])], 1)
    fit = torch.linalg.lstsq(design, torch.stack([rgb[0][keep], rgb[1][keep]], 1).double()).solution.T
    m = fit[:, :2]
    det = float(torch.linalg.det(m))
    return abs(det), float(torch.rad2deg(torch.atan2(m[1, 0], m[1, 1]))), det < 0


def _ks(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical distributions."""
    a_, b_ = torch.tensor(sorted(a)), torch.tensor(sorted(b))
    points = torch.cat([a_, b_])
    cdf = lambda s: torch.searchsorted(s, points, right=True) / len(s)  # noqa: E731
    return float((cdf(a_) - cdf(b_)).abs().max())


def test_pil_path_and_image_cache_draw_the_same_crop_scales_angles_and_flips(tmp_path):
    """Both paths' real outputs, for a fixed seed, show the same distribution of crop areas, angles and flips.

    N views each; under equal distributions the KS statistic exceeds 1.95 * sqrt(2 / N) with probability
    0.001 (0.159 for N = 300), so it fails by chance once in a thousand seeds, and never for this fixed one
    (0.08 here). Measured, the cache path with the zoom left off reads 0.19, the rotation halved 0.21, the
    rotation left off 0.41, crop_scale 0.75 instead of 0.35 0.68.
    """
    n, prep = 300, preprocessing("vgg11", 32)
    steps = {"crop_scale": 0.35, "rotate": 10, "zoom": 1.1, "warp": 0, "brightness": 0, "contrast": 0}
    pil = train_transform(prep, "light", **steps)
    torch.manual_seed(0)
    from_pil = [_crop_area_and_angle(pil(_coordinates()), prep) for _ in range(n)]
    _coordinates().save(tmp_path / "coords.png")
    cache = build_cache([tmp_path / "coords.png"], prep, tmp_path)
    drawer = LookDrawer(Augment(**steps), prep.image_size)
    ds = CachedImageDataset(cache, [0], prep.resize_size, True, seed=0, crop_scale=0.35, look=drawer)
    items = []
    for epoch in range(n):  # one image, drawn anew each epoch
        ds.set_epoch(epoch)
        items.append(ds[0])
    batch = [torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(5)]
    x, _ = device_transform(batch, prep, train=True)
    from_cache = [_crop_area_and_angle(view, prep) for view in x]
    limit = 1.95 * (2 / n) ** 0.5
    for k, what in ((0, "crop area"), (1, "angle")):
        a, b = [r[k] for r in from_pil], [r[k] for r in from_cache]
        assert _ks(a, b) < limit, what
    # the fit reads what was asked: areas within [0.35, 1] / zoom ** 2, angles within 10 degrees, a quarter not rotated
    for rows in (from_pil, from_cache):
        areas, angles = [r[0] for r in rows], [r[1] for r in rows]
        assert 0.35 / 1.1**2 - 0.03 < min(areas) < 0.45 and max(areas) > 0.9
        assert max(abs(a) for a in angles) < 10.5 and sum(abs(a) < 0.3 for a in angles) > 0.15 * n
    flips = [sum(r[2] for r in rows) / n for rows in (from_pil, from_cache)]
    assert abs(flips[0] - flips[1]) < 4 * (0.25 / n) ** 0.5 * 2**0.5  # 4 sd of the difference of two shares
