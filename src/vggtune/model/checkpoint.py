"""Writing checkpoints atomically and loading them safely (``weights_only=True``)."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vggtune.core.files import atomic_open
from vggtune.model.module import VGGClassifier
from vggtune.model.weights import read_checkpoint

_OLD_SCHEDULERS = "vggtune.schedulers."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then rename it into place.

    Lightning's own ``TorchCheckpointIO`` writes the target file directly, so a kill during a
    save leaves a truncated ``last.ckpt``; a rename is atomic on POSIX file systems.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a vggtune checkpoint with ``weights_only=True``, or raise a UserError saying what is wrong.

    Nothing in the file is executed: a pickle that would build arbitrary objects is refused.
    """
    ckpt = read_checkpoint(path, mmap=False)
    ckpt["state_dict"] = {_strip_compile_prefix(k): v for k, v in ckpt["state_dict"].items()}
    return ckpt


def _strip_compile_prefix(key: str) -> str:
    # A torch.compile'd module saves its keys as "..._orig_mod.<name>" (lightning #17415, #20233).
    return key.replace("_orig_mod.", "")


def model_from_checkpoint(path: str | os.PathLike):
    """The VGGClassifier stored in a checkpoint, in eval mode on the CPU, without downloading weights."""
    ckpt = load_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.update(weights="none", compile=False)
    scheduler = hparams.get("scheduler")
    target = str(scheduler.get("_target_", "")) if isinstance(scheduler, dict) else ""
    if isinstance(scheduler, dict) and target.startswith(
        _OLD_SCHEDULERS
    ):  # written before the 0.2 layout moved the module
        moved = "vggtune.model.schedulers." + target.removeprefix(_OLD_SCHEDULERS)
        hparams["scheduler"] = {**scheduler, "_target_": moved}
    model = VGGClassifier(**hparams)
    model.load_state_dict(ckpt["state_dict"])
    ours = ckpt.get("vggtune") or {}
    model.calibration = ours.get("calibration")
    if ours.get("thresholds") is not None:
        model.thresholds = [float(t) for t in ours["thresholds"]]
    return model.eval()
