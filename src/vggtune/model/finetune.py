"""Freeze schedules and discriminative learning rates over VGG's layer groups.

Design, and the upstream traps it avoids:

* The optimizer gets one named parameter group per layer group (``head``, ``fc``, ``block5`` ...
  ``block1``) from the start, each with its own learning rate. Groups are never added mid-run,
  so LR schedulers cover every group and resuming never meets "a different number of parameter
  groups" (lightning #6891, #8502, #12141).
* A frozen group's tensors have ``requires_grad=False``. Their ``.grad`` stays ``None`` and
  PyTorch's optimizers skip such tensors entirely: no weight decay, no momentum, bit-identical.
* Frozen BatchNorm (and Dropout) run in eval mode, so running statistics do not move (Keras's rule).
  Lightning's ``BackboneFinetuning(train_bn=False)`` still trains BN (lightning #13902, #20629)
  and its ``freeze_module`` disables running stats, normalising with batch statistics (#15062).
* DDP only reduces gradients of tensors that required grad when it wrapped the model
  (lightning #20340): :class:`FreezeSchedule` all-reduces the gradients of groups unfrozen later.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Protocol, cast

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn

from vggtune.core.errors import UserError
from vggtune.model.arch import GROUPS, layer_groups
from vggtune.model.resume import batches_done_in_epoch

log = logging.getLogger(__name__)

SCHEDULES = ("linear_probe", "freeze_unfreeze", "gradual", "full")
BN_MODES = ("frozen", "train")
# How a network from random init trains by default: every layer from the first step at one learning rate.
FROM_SCRATCH = {"name": "full", "unfreeze_at_epoch": 0, "lr_decay": 1.0, "backbone_lr_ratio": None, "bn": "train"}


class Tunable(Protocol):
    """What a freeze schedule reads and sets on its LightningModule (VGGClassifier, which this module cannot
    import: it imports this one). A callback gets a ``pl.LightningModule``, whose attributes the type checker
    sees as ``Tensor | Module`` (nn.Module's ``__getattr__``): ``cast(Tunable, pl_module)`` names them."""

    model: nn.Module
    schedule: Schedule
    frozen_eval: list[nn.Module]
    training: bool

    def train(self, mode: bool = True) -> object: ...


@dataclass(frozen=True)
class Schedule:
    """Which layer groups train in which epoch, and each group's learning-rate factor."""

    name: str = "freeze_unfreeze"
    unfreeze_at_epoch: int = 1
    every_n_epochs: int = 1
    train_fc: bool = True
    lr_decay: float = 0.5
    backbone_lr_ratio: float | None = None
    bn: str = "frozen"

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise UserError(f"unknown finetune schedule '{self.name}': choose one of {', '.join(SCHEDULES)}")
        for key in ("unfreeze_at_epoch", "every_n_epochs"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "every_n_epochs" else 0):
                raise UserError(
                    f"finetune.{key} must be a whole number of epochs "
                    f"(at least {1 if key == 'every_n_epochs' else 0}), got {v!r}"
                )
        if not _is_fraction(self.lr_decay):
            raise UserError(f"finetune.lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.backbone_lr_ratio is not None and not _is_fraction(self.backbone_lr_ratio):
            raise UserError(f"finetune.backbone_lr_ratio must be in (0, 1] or null, got {self.backbone_lr_ratio!r}")
        if self.bn not in BN_MODES:
            raise UserError(f"finetune.bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")

    def to_dict(self) -> dict:
        """Plain values for hyperparameters and logs."""
        return asdict(self)

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        """The layer groups that train in ``epoch`` (0-based), top-down."""
        top = 2 if self.train_fc else 1
        if self.name == "full":
            n = len(GROUPS)
        elif self.name == "linear_probe":
            n = top
        elif self.name == "freeze_unfreeze":
            n = len(GROUPS) if epoch >= self.unfreeze_at_epoch else top
        else:  # gradual: one more group from the top every `every_n_epochs` epochs
            n = top + epoch // self.every_n_epochs
        return GROUPS[: min(n, len(GROUPS))]

    def last_change_epoch(self) -> int:
        """The first epoch from which the trainable set no longer changes."""
        if self.name == "freeze_unfreeze":
            return self.unfreeze_at_epoch
        if self.name == "gradual":
            return (len(GROUPS) - (2 if self.train_fc else 1)) * self.every_n_epochs
        return 0

    def lr_factor(self, group: str) -> float:
        """Learning rate of ``group`` relative to the base LR: 1 for the head, lower further down."""
        depth = GROUPS.index(group)
        if depth == 0:
            return 1.0
        if self.backbone_lr_ratio is not None:
            return float(self.backbone_lr_ratio)
        return float(self.lr_decay) ** depth


def _is_fraction(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v <= 1


def param_groups(model: nn.Module, schedule: Schedule, base_lr: float) -> list[dict]:
    """One named optimizer parameter group per layer group, every group present from the start."""
    return [
        {"name": name, "params": list(module.parameters()), "lr": base_lr * schedule.lr_factor(name)}
        for name, module in layer_groups(model).items()
    ]


def apply_schedule(pl_module: Tunable, schedule: Schedule, epoch: int) -> int:
    """Set ``requires_grad`` and inference modes for ``epoch``; return the number of trainable parameters.

    A frozen group is a fixed feature extractor, so it runs as at inference: its BatchNorm
    layers (unless ``bn=train``) and its Dropout layers stay in eval mode. That also makes a
    frozen group's output the same whether it is computed each step or cached once.
    """
    trainable = set(schedule.trainable_groups(epoch))
    frozen_eval = []
    for name, module in layer_groups(pl_module.model).items():
        train = name in trainable
        for m in module.modules():
            is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            keep_training = train or (is_bn and schedule.bn == "train")
            for p in m.parameters(recurse=False):
                p.requires_grad_(keep_training)
            if not keep_training and (is_bn or isinstance(m, nn.Dropout)):
                frozen_eval.append(m)
    pl_module.frozen_eval = frozen_eval
    pl_module.train(pl_module.training)  # re-applies eval mode to them
    return sum(p.numel() for p in pl_module.model.parameters() if p.requires_grad)


class FreezeSchedule(pl.Callback):
    """Applies the module's :class:`Schedule` at the start of every training epoch (and of a resumed one)."""

    def __init__(self):
        self._ddp_synced: set[int] | None = None
        self._current: tuple[str, ...] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the strategy wraps the model: DDP sees the epoch-0 frozen set.
        if stage == "fit":
            module = cast(Tunable, pl_module)
            apply_schedule(module, module.schedule, 0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The model is wrapped now: remember which tensors DDP reduces itself.
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._ddp_synced = {id(p) for p in pl_module.parameters() if p.requires_grad}
        if batches_done_in_epoch(trainer):  # resumed part-way through an epoch: it gets no epoch start
            self._apply(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = sum(p.numel() for p in cast(Tunable, pl_module).model.parameters() if p.requires_grad)
        pl_module.log("trainable_params", float(n), on_step=False, on_epoch=True, sync_dist=True)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, module = trainer.current_epoch, cast(Tunable, pl_module)
        n = apply_schedule(module, module.schedule, epoch)
        groups = module.schedule.trainable_groups(epoch)
        if groups != self._current:
            if trainer.is_global_zero:
                log.info(
                    "Epoch %d: training %s (%s parameters); frozen: %s",
                    epoch,
                    ", ".join(groups),
                    f"{n:,}",
                    ", ".join(g for g in GROUPS if g not in groups) or "nothing",
                )
            self._current = groups

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._ddp_synced:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None and id(p) not in self._ddp_synced]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
