"""MixUp and CutMix on training batches (torchvision.transforms.v2): pairs of images in a batch are blended
(MixUp) or patched into each other (CutMix), and each target becomes the two classes' shares.

Applied where the batch already is, after the loader's transforms (and the image cache's crop and flip), by
:meth:`vggtune.data.datamodule.ClassFolderDataModule.on_after_batch_transfer`, in training steps only. The
draws come from torch's generator, which :class:`~vggtune.training.callbacks.EpochSeed` seeds each epoch, so a
resumed run mixes as an uninterrupted one does.
"""

from __future__ import annotations

import torch

from vggtune.schema.check import check_value


def check_alphas(mixup, cutmix) -> tuple[float, float]:
    """``data.mixup`` and ``data.cutmix`` as floats, if their declarations (vggtune.schema) accept them."""
    return float(check_value("data.mixup", mixup)), float(check_value("data.cutmix", cutmix))


class BatchMixer:
    """``(images, class indices) -> (mixed images, class shares)``; with both alphas set, each batch draws
    MixUp or CutMix with equal chance (as torchvision's reference recipes do)."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int):
        from torchvision.transforms import v2

        mixers = [
            kind(alpha=alpha, num_classes=num_classes)
            for kind, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix))
            if alpha > 0
        ]
        self.transform = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(images, targets)
