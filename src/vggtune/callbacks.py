"""Small Lightning callbacks that every training run uses."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.fabric.utilities.seed import seed_everything


class EpochSeed(pl.Callback):
    """Re-seed every RNG at the start of each training epoch from (seed, epoch).

    The shuffle order and dropout of an epoch then depend only on the seed and the epoch
    number, and the training dataset is told the epoch for its per-sample augmentation seeds,
    so a run resumed from a checkpoint replays the same epochs as an uninterrupted one
    (Lightning does not checkpoint RNG states).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        seed_everything((self.seed * 1000 + epoch) % 2**32, workers=True, verbose=False)
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
