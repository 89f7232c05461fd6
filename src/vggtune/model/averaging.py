"""Weight averaging (``callbacks=[default,ema]``, Lightning's ``EMAWeightAveraging``) in weights-only files.

Lightning validates the averaged weights, and in a full checkpoint (``last.ckpt``) puts them in
``state_dict`` with the current weights beside them; but a weights-only checkpoint (``best.ckpt``) skips
the callbacks' ``on_save_checkpoint`` and is saved after the callback has swapped the current weights back:
best.ckpt held weights that were never validated, while its val/acc was the average's (the question left
open in Lightning PR #20545). :meth:`VGGClassifier.on_save_checkpoint` puts the average there instead.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging


def averaged_state_dict(trainer: pl.Trainer | None) -> dict[str, torch.Tensor] | None:
    """The module's state dict as the weight-averaging callback holds it, or None without one."""
    # Trainer.callbacks: set by Lightning's CallbackConnector, not declared on the class (Lightning 2.6)
    for callback in trainer.callbacks if trainer is not None else []:  # type: ignore[attr-defined]
        average = getattr(callback, "_average_model", None) if isinstance(callback, WeightAveraging) else None
        if average is not None:
            return {
                name[len("module.") :]: value.detach().clone()
                for name, value in average.state_dict().items()
                if name.startswith("module.")
            }
    return None
