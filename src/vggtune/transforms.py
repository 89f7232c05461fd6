"""Image transforms for training (augmentation levels) and evaluation, from torchvision.transforms.v2."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from vggtune.arch import Preprocessing
from vggtune.errors import UserError

AUGMENT_LEVELS = ("none", "light", "strong")


def _to_normalized_tensor(prep: Preprocessing) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize the short side, centre-crop, normalise: what the ImageNet weights were evaluated with."""
    return v2.Compose([v2.Resize(prep.resize_size, antialias=True), v2.CenterCrop(prep.image_size),
                       *_to_normalized_tensor(prep)])


def train_transform(prep: Preprocessing, augment: str = "light") -> v2.Compose:
    """Training transform for an augmentation level: ``none``, ``light`` or ``strong``.

    ``light`` is a random resized crop keeping at least a third of the image, plus a flip;
    ``strong`` adds the full crop range, TrivialAugment and random erasing (for small data
    sets trained long).
    """
    if augment not in AUGMENT_LEVELS:
        raise UserError(f"data.augment must be one of {', '.join(AUGMENT_LEVELS)}, got {augment!r}")
    if augment == "none":
        return eval_transform(prep)
    size = prep.image_size
    if augment == "light":
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *_to_normalized_tensor(prep)])
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.TrivialAugmentWide(), *_to_normalized_tensor(prep), v2.RandomErasing(p=0.25)])
