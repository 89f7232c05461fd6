"""The augmentation keys: data.crop_scale and data.flip do what they say, on the PIL path and in the image cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_class_folders
from PIL import Image

from vggtune.core.errors import UserError
from vggtune.data.image_cache import CachedImageDataset, build_cache
from vggtune.data.transforms import train_transform
from vggtune.model.arch import preprocessing


def _ramp() -> Image.Image:
    """Dark on the left, bright on the right: a mirror flip reverses the columns' order."""
    a = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))
    return Image.fromarray(np.stack([a] * 3, -1).astype(np.uint8))


def _left_darker(x: torch.Tensor) -> bool:
    return bool(x[:, :, : x.shape[2] // 2].mean() < x[:, :, x.shape[2] // 2 :].mean())


@pytest.mark.parametrize("flip", [True, False])
def test_flip_false_never_mirrors_and_true_sometimes_does(flip):
    tf = train_transform(preprocessing("vgg11", 32), "light", crop_scale=0.9, flip=flip)
    torch.manual_seed(0)
    mirrored = sum(not _left_darker(tf(_ramp())) for _ in range(40))
    assert (mirrored > 5) if flip else (mirrored == 0)


@pytest.mark.parametrize("scale", [0.1, 0.8])
def test_crop_scale_is_the_smallest_area_a_crop_keeps(scale):
    tf = train_transform(preprocessing("vgg11", 32), "light", crop_scale=scale, flip=False)
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
        flips = sum(f for *_, f in items)
        assert (flips > 0) if flip else (flips == 0)
        side = prep.resize_size
        assert all((b[2] - b[0]) * (b[3] - b[1]) >= 0.9 * side * side - 2 * side for _, _, b, _ in items)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"crop_scale": 0}, "data.crop_scale"),
        ({"crop_scale": 1.5}, "data.crop_scale"),
        ({"flip": "yes"}, "data.flip must be true or false"),
    ],
)
def test_bad_augmentation_values_name_the_key(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        train_transform(preprocessing("vgg11", 32), "light", **kwargs)
