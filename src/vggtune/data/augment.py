"""What ``data.augment=light`` draws after its crop and flip (rotation, zoom, warp, brightness, contrast),
as torchvision v2 transforms, and the same draws applied to a whole batch on the training device.

The PIL path runs :meth:`Augment.geometry` and :meth:`Augment.lighting` on each image. The image
cache and the stream crop on the device, so they draw the same v2 transforms, from the same seeded
generator, on what they can be run on without the image: the geometry on the four corners of the
output canvas (``tv_tensors.KeyPoints``, which torchvision moves exactly as it moves the pixels),
the lighting on a two-pixel probe. :class:`LookDrawer` turns those into one row (per step the
projective map from output to input pixels, then the brightness and the contrast factor) and
:func:`apply_look` applies a batch of rows, with a ``grid_sample`` per step as torchvision resamples
once per step (one composed map would show image where torchvision shows the fill: what the first
step moved off the canvas, the second may bring back). Corners that a rotation or warp uncovers are filled with the
normalisation mean, so they enter the network as zeros on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from vggtune.core.errors import UserError

MAPS = 2  # the geometry's steps: rotation and zoom, warp
LOOK_SIZE = 9 * MAPS + 2  # a 3 x 3 projective map per step, brightness factor, contrast factor
_PROBE = (0.1, 0.2)  # grey levels that no brightness or contrast factor below 2 pushes out of [0, 1]
_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights, which adjust_contrast takes the mean of


@dataclass(frozen=True)
class Augment:
    """The random steps of ``data.augment=light``, each off at its neutral value.

    ``crop_scale``: the smallest share of the area a random resized crop keeps (1: no crop);
    ``flip``: mirror half the images; ``rotate``: degrees, drawn in [-rotate, rotate]; ``zoom``: the
    largest zoom in, drawn in [1, zoom]; ``warp``: torchvision's perspective ``distortion_scale``;
    rotation and zoom (together) and the warp each apply with probability ``affine_p``;
    ``brightness``, ``contrast``: factors drawn in [1 - b, 1 + b], each with probability ``lighting_p``.
    fastai's ``aug_transforms()`` is flip, rotate 10, zoom 1.1, warp 0.2, brightness and contrast
    0.2 (its ``max_lighting``), with both probabilities 0.75; ``light`` is that without the warp
    (torchvision's perspective only moves the corners inward, so every warped image gets fill borders).
    """

    crop_scale: float = 1.0
    flip: bool = True
    rotate: float = 0.0
    zoom: float = 1.0
    warp: float = 0.0
    affine_p: float = 0.75
    brightness: float = 0.0
    contrast: float = 0.0
    lighting_p: float = 0.75

    def check(self) -> Augment:
        """Itself, or a UserError naming the first key out of its range."""
        if not _number(self.crop_scale) or not 0 < self.crop_scale <= 1:
            raise UserError(
                f"data.crop_scale is the smallest share of the image a training crop keeps: a number in "
                f"(0, 1], e.g. data.crop_scale=0.35, got {self.crop_scale!r}"
            )
        if not isinstance(self.flip, bool):
            raise UserError(f"data.flip must be true or false, got {self.flip!r}")
        ranges = {
            "rotate": (0, 180, "degrees, e.g. data.rotate=10"),
            "zoom": (1, 4, "the largest zoom in, e.g. data.zoom=1.1 (1: none)"),
            "warp": (0, 1, "torchvision's perspective distortion, e.g. data.warp=0.2 (0: none)"),
            "affine_p": (0, 1, "a probability"),
            "brightness": (0, 0.99, "e.g. data.brightness=0.2 (0: none)"),
            "contrast": (0, 0.99, "e.g. data.contrast=0.2 (0: none)"),
            "lighting_p": (0, 1, "a probability"),
        }
        for key, (low, high, what) in ranges.items():
            value = getattr(self, key)
            if not _number(value) or not low <= value <= high:
                raise UserError(f"data.{key} must be a number in [{low}, {high}] ({what}), got {value!r}")
        return self

    def geometry(self, fill: tuple[float, ...]) -> list[v2.Transform]:
        """Rotation and zoom, then the warp, on the cropped image (``fill``: the uncovered pixels)."""
        steps = []
        if self.rotate or self.zoom > 1:
            affine = v2.RandomAffine(
                self.rotate, scale=(1.0, self.zoom), interpolation=v2.InterpolationMode.BILINEAR, fill=fill
            )
            steps.append(v2.RandomApply([affine], p=self.affine_p))
        if self.warp:
            steps.append(v2.RandomPerspective(self.warp, p=self.affine_p, fill=fill))
        return steps

    def lighting(self) -> list[v2.Transform]:
        """Brightness, then contrast, on the float image in [0, 1] (a fixed order, unlike ColorJitter's)."""
        steps = []
        for key in ("brightness", "contrast"):
            if getattr(self, key):
                steps.append(v2.RandomApply([v2.ColorJitter(**{key: getattr(self, key)})], p=self.lighting_p))
        return steps


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LookDrawer:
    """Draws :func:`draw_look` rows for ``augment`` at ``size`` px (the transforms built once)."""

    def __init__(self, augment: Augment, size: int):
        self.size = size
        self.geometry = augment.geometry(fill=(0.0, 0.0, 0.0))
        # v2.Compose refuses an empty list: Identity stands in for no lighting
        self.lighting = v2.Compose(augment.lighting() or [v2.Identity()])
        side = float(size)
        self.corners = torch.tensor([[0.0, 0.0], [side, 0.0], [side, side], [0.0, side]])

    def __call__(self) -> torch.Tensor:
        """One image's row, from torch's default generator (seed it first, as the PIL path's is)."""
        maps = [torch.eye(3, dtype=torch.float64)] * MAPS
        for i, step in enumerate(self.geometry):
            moved = step(tv_tensors.KeyPoints(self.corners, canvas_size=(self.size, self.size)))
            maps[i] = _projective(torch.as_tensor(moved, dtype=torch.float64), self.corners.double())
        probe = self.lighting(tv_tensors.Image(torch.tensor(_PROBE).view(1, 1, 2).expand(3, 1, 2).clone()))
        # brightness b then contrast c: z = c * b * x + (1 - c) * b * mean(x), so the sum keeps b and the spread c * b
        low, high = probe[0, 0].double().tolist()
        b = (low + high) / sum(_PROBE)
        c = (high - low) / (b * (_PROBE[1] - _PROBE[0])) if b > 0 else 1.0
        return torch.cat([*(m.flatten() for m in maps), torch.tensor([b, c], dtype=torch.float64)]).float()


def identity_look() -> torch.Tensor:
    """The row of an image that is neither moved nor relit."""
    return torch.cat([torch.eye(3).flatten()] * MAPS + [torch.ones(2)])


def _projective(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 3 x 3 map sending the four points ``src`` to ``dst`` (x, y rows; the last entry 1)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist(), strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def apply_look(x: torch.Tensor, looks: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Move and relight a batch (N, 3, S, S) of pixel values in [0, 255] by its rows ``looks`` (N, LOOK_SIZE).

    Each step's pixel at output position p takes the input at ``map @ p`` (bilinear, pixel centres at
    +0.5 as torchvision's kernels place them); uncovered pixels take ``mean`` (1, 3, 1, 1).
    """
    looks = looks.to(x.device, torch.float32)
    for step in range(MAPS):
        x = _move(x, looks[:, 9 * step : 9 * step + 9].reshape(-1, 3, 3), mean)
    b, c = looks[:, -2].view(-1, 1, 1, 1), looks[:, -1].view(-1, 1, 1, 1)
    if not (torch.all(b == 1) and torch.all(c == 1)):
        # torchvision's adjust_brightness, then adjust_contrast (a blend with the grey mean), on [0, 1]
        x = (x / 255 * b).clamp(0, 1)
        grey = (x * torch.tensor(_GREY, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (c * x + (1 - c) * grey.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1) * 255
    return x


def _move(x: torch.Tensor, maps: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    moved = ~torch.isclose(maps, torch.eye(3, device=x.device)).flatten(1).all(dim=1)
    if not moved.any():
        return x
    ys, xs = torch.meshgrid(
        torch.arange(h, device=x.device) + 0.5, torch.arange(w, device=x.device) + 0.5, indexing="ij"
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, -1, 3)
    source = points @ maps.transpose(1, 2)
    grid = (source[..., :2] / source[..., 2:] / torch.tensor([w, h], device=x.device) * 2 - 1).view(n, h, w, 2)
    # with a channel of ones, whose sample is how much of each pixel the image covers: torchvision's
    # own fill (v2.functional's _apply_grid_transform), so the two paths agree at the borders too
    ones = torch.ones_like(x[:, :1])
    warped = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = (warped[:, :3] - mean) * warped[:, 3:] + mean
    return torch.where(moved.view(-1, 1, 1, 1), warped, x)
