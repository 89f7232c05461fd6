"""Small Lightning callbacks that every training run uses."""

from __future__ import annotations

import hashlib

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities import rank_zero_warn

from vggtune.model.resume import batches_done_in_epoch


class EpochSeed(pl.Callback):
    """Re-seed every RNG at the start of each training epoch from (seed, epoch).

    Dropout in an epoch then depends only on the seed and the epoch number (shuffling and
    augmentation are seeded by :class:`~vggtune.data.datasets.EpochSampler`), so a run resumed from
    a checkpoint replays the same epochs as an uninterrupted one: Lightning does not checkpoint
    RNG states. A checkpoint written part-way through an epoch (Ctrl-C, SIGTERM) keeps torch's
    generators as they are between two steps, and the resumed run goes on from them.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._trainer: pl.Trainer | None = None
        self._restored: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_everything((self.seed * 1000 + trainer.current_epoch) % 2**32, workers=True, verbose=False)

    def state_dict(self) -> dict:
        if not batches_done_in_epoch(self._trainer):
            return {}
        state: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict) or None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is not None and batches_done_in_epoch(trainer):  # resumed part-way: no epoch start
            torch.set_rng_state(self._restored["torch"])
            if "cuda" in self._restored and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._restored["cuda"])
        self._restored = None


class ReplicaCheck(pl.Callback):
    """At the end of training, say how many epochs ran and, under DDP, whether every rank's weights agree.

    Replicas that drift apart (for instance gradients of a layer left out of DDP's reduction)
    fail silently otherwise. The results go into ``trainer.callback_metrics`` because that is
    what Lightning copies back to the main process from ``ddp_spawn`` workers.
    """

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["run/epochs"] = torch.tensor(float(trainer.current_epoch))
        if trainer.world_size < 2 or not dist.is_initialized():
            return
        h = hashlib.sha256()
        for p in pl_module.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
        digests: list[str | None] = [None] * trainer.world_size
        dist.all_gather_object(digests, h.hexdigest()[:16])
        identical = len(set(digests)) == 1
        trainer.callback_metrics["replicas/identical"] = torch.tensor(float(identical))
        trainer.callback_metrics["replicas/world_size"] = torch.tensor(float(trainer.world_size))
        if not identical:
            rank_zero_warn(f"the {trainer.world_size} DDP replicas ended with different weights: {digests}")
