"""Learning-rate schedules, each returning a Lightning ``lr_scheduler`` config.

Every schedule multiplies each parameter group's own learning rate, so the discriminative
learning rates of the freeze schedules keep their ratios throughout.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR


class WarmupCosine:
    """LR factor per step: linear warm-up from ~0 to 1, then cosine decay to ``final_ratio``.

    A class rather than a closure so that LambdaLR can save it in checkpoints.
    """

    def __init__(self, total_steps: int, warmup_steps: int, final_ratio: float):
        self.total_steps, self.warmup_steps, self.final_ratio = max(1, total_steps), warmup_steps, final_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_fraction: float = 0.05,
    final_ratio: float = 0.01,
) -> dict:
    """Cosine decay over the whole run after a linear warm-up of ``warmup_fraction`` of it, stepped per batch."""
    warmup = int(round(total_steps * warmup_fraction))
    return {"scheduler": LambdaLR(optimizer, WarmupCosine(total_steps, warmup, final_ratio)), "interval": "step"}


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    cycle_momentum: bool = True,
) -> dict:
    """torch's OneCycleLR over the whole run, stepped per batch, peaking at each group's own learning rate."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    return {
        "scheduler": OneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=max(1, total_steps),
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            cycle_momentum=cycle_momentum,
            base_momentum=0.85,
            max_momentum=0.95,
        ),
        "interval": "step",
    }


def step(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 5, gamma: float = 0.1
) -> dict:
    """Multiply every group's LR by ``gamma`` every ``step_epochs`` epochs."""
    return {"scheduler": StepLR(optimizer, step_size=step_epochs, gamma=gamma), "interval": "epoch"}


def plateau(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    monitor: str = "val/loss",
    factor: float = 0.3,
    patience: int = 2,
) -> dict:
    """Multiply every group's LR by ``factor`` when ``monitor`` stops improving for ``patience`` epochs."""
    mode: Literal["min", "max"] = "min" if monitor.endswith("loss") else "max"
    return {
        "scheduler": ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience),
        "interval": "epoch",
        "monitor": monitor,
    }


def _one(step: int) -> float:
    return 1.0


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> dict:
    """Keep every group's learning rate fixed (a scheduler still, so the LR monitor's tags stay the same)."""
    return {"scheduler": LambdaLR(optimizer, _one), "interval": "epoch"}
