"""Image transforms for training (augmentation levels) and evaluation, from torchvision.transforms.v2."""

from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.transforms import v2

from vggtune.core.errors import UserError
from vggtune.data.augment import Augment
from vggtune.model.arch import Preprocessing

AUGMENT_LEVELS = ("none", "light", "crop", "strong")
DEVICE_LEVELS = ("light", "crop")  # the augmenting levels the image cache and the stream apply on the device
TTA_MODES = ("none", "flip", "five_crop")
DEFAULT_CROP_SCALE = 0.35
# Each level's values for the keys left at null (measured beside fastai: bench/README.md, "Augmentation").
# light: fastai's aug_transforms() set (flip, rotation, zoom, brightness, contrast; p 0.75) without its warp, no crop
# (torchvision's RandomPerspective only pulls the corners in, so every warped image gets fill borders: issue 30's
# ablation measured light 0.816 with the warp, 0.919 without, fastai's aug_transforms() 0.844; data.warp= adds it);
# crop: the earlier light, a random resized crop keeping 35% of the area or more, and the flip.
LEVELS = {
    "light": Augment(crop_scale=1.0, rotate=10, zoom=1.1, brightness=0.2, contrast=0.2),
    "crop": Augment(crop_scale=DEFAULT_CROP_SCALE),
}


def _to_normalized_tensor(prep: Preprocessing) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize the short side, centre-crop, normalise: what the ImageNet weights were evaluated with."""
    return v2.Compose(
        [v2.Resize(prep.resize_size, antialias=True), v2.CenterCrop(prep.image_size), *_to_normalized_tensor(prep)]
    )


def unit_transform(prep: Preprocessing) -> v2.Compose:
    """:func:`eval_transform` without the normalisation: float RGB in [0, 1], what an exported file takes
    (it normalises inside)."""
    return v2.Compose(
        [
            v2.Resize(prep.resize_size, antialias=True),
            v2.CenterCrop(prep.image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class _Views(torch.nn.Module):
    """Several views of one image, stacked (views, 3, H, W); the first is always what :func:`eval_transform` gives."""

    def __init__(self, prep: Preprocessing, mode: str):
        super().__init__()
        self.mode = mode
        self.resize = v2.Resize(prep.resize_size, antialias=True)
        self.crop, self.tensor = v2.CenterCrop(prep.image_size), v2.Compose(_to_normalized_tensor(prep))
        self.five = v2.FiveCrop(prep.image_size)

    def forward(self, image) -> torch.Tensor:
        image = self.resize(image)
        if self.mode == "flip":
            plain = self.tensor(self.crop(image))
            return torch.stack([plain, plain.flip(-1)])
        tl, tr, bl, br, centre = self.five(image)  # torchvision's centre crop is CenterCrop's
        return torch.stack([self.tensor(v) for v in (centre, tl, tr, bl, br)])


def check_tta(mode: str) -> str:
    """``mode`` if it names a test-time augmentation, else a UserError listing them."""
    if mode not in TTA_MODES:
        raise UserError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def tta_transform(prep: Preprocessing, mode: str = "none"):
    """The evaluation transform (``none``), or one giving a stack of views whose probabilities are averaged.

    ``flip``: the image and its mirror (not for digits or text, where a mirror changes the class);
    ``five_crop``: the four corner crops and the centre crop of the resized image. View 0 is always
    the plain evaluation view, so the gain of the augmentation can be measured in the same pass.
    """
    return eval_transform(prep) if check_tta(mode) == "none" else _Views(prep, mode)


def check_augment(augment: str, crop_scale: float | None = None, flip: bool = True, **steps) -> Augment:
    """The :class:`~vggtune.data.augment.Augment` of a level with the keys given (not None) in place of
    its own values, or a UserError naming the bad key."""
    if augment not in AUGMENT_LEVELS:
        raise UserError(f"data.augment must be one of {', '.join(AUGMENT_LEVELS)}, got {augment!r}")
    given = {k: v for k, v in {"crop_scale": crop_scale, **steps}.items() if v is not None}
    return replace(LEVELS.get(augment, Augment()), flip=flip, **given).check()


def train_transform(
    prep: Preprocessing, augment: str = "light", crop_scale: float | None = None, flip: bool = True, **steps
) -> v2.Compose:
    """Training transform for an augmentation level: ``none``, ``light``, ``crop`` or ``strong``.

    ``light`` and ``crop`` are a random resized crop keeping at least ``crop_scale`` of the image's
    area, a mirror flip unless ``flip=False`` (text, digits: anything a mirror changes), then the
    rotation, zoom, warp, brightness and contrast of ``steps`` (:class:`~vggtune.data.augment.Augment`'s
    keys), each key None taking the level's value (:data:`LEVELS`); ``strong`` is the full crop
    range, the flip, TrivialAugment and random erasing (for small data sets trained long).
    """
    look = check_augment(augment, crop_scale, flip, **steps)
    if augment == "none":
        return eval_transform(prep)
    size = prep.image_size
    flips = [v2.RandomHorizontalFlip()] if flip else []
    if augment in DEVICE_LEVELS:
        fill = tuple(round(255 * m) for m in prep.mean)  # the normalised image's zero, as on the device
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(look.crop_scale, 1.0), antialias=True),
                *flips,
                *look.geometry(fill),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                *look.lighting(),
                v2.Normalize(prep.mean, prep.std),
            ]
        )
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            *flips,
            v2.TrivialAugmentWide(),
            *_to_normalized_tensor(prep),
            v2.RandomErasing(p=0.25),
        ]
    )
