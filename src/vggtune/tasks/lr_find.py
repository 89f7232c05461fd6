"""``vggtune lr_find``: Lightning's learning-rate range test (``Tuner.lr_find``) on the configured run.

The model, data, freeze schedule and optimizer are those ``vggtune train`` builds from the same
overrides. Every layer group gets the same LR during the test (Lightning's finder sets them
all), with the schedule's epoch-0 groups trainable, so the suggestion is for ``optim.lr``, the
head's LR; lower groups keep their ``finetune.lr_decay`` ratios when training.
"""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.model.finetune import Tunable, apply_schedule
from vggtune.tasks.checks import check_lr_find, check_train
from vggtune.tasks.runs import report_files, write_json
from vggtune.tasks.train import build_module, resolve_recipe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def lr_find(cfg: DictConfig) -> dict:
    """Run the range test; write ``lr_find.png`` and ``lr_find.json`` to the run folder; return the JSON."""
    check_train(cfg)
    check_lr_find(cfg)
    opts = cfg.lr_find
    resolve_recipe(cfg)
    run_dir = Path(cfg.paths.run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, cache_images=False)
    module = build_module(cfg, datamodule.split.classes, datamodule.preprocessing.to_dict(), datamodule.loss_weights())
    # max_epochs=num_training: the test's steps however short an epoch is (one batch each at least), all with
    # the groups that train in epoch 0 (a later unfreeze would change what the loss curve measures).
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_epochs=int(opts.num_training),
        callbacks=[_EpochZeroGroups()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    finder = Tuner(trainer).lr_find(
        module,
        datamodule=datamodule,
        min_lr=float(opts.min_lr),
        max_lr=float(opts.max_lr),
        num_training=int(opts.num_training),
        early_stop_threshold=opts.early_stop_threshold,
        update_attr=False,
    )
    # Lightning skips the first 10 points, so a short test (under 12 steps) would get no suggestion.
    n = len(finder.results.get("lr", [])) if finder is not None else 0
    suggestion = finder.suggestion(skip_begin=min(10, n // 4)) if finder is not None and n >= 3 else None
    if finder is None or suggestion is None or not math.isfinite(suggestion):
        raise UserError(
            "lr_find: the loss did not fall at any LR tried, so there is no suggestion: raise "
            "lr_find.num_training, or widen lr_find.min_lr / lr_find.max_lr"
        )
    fig = cast("Figure", finder.plot(suggest=True))  # without ax=, a new figure (Lightning types it Optional)
    losses = [v for v in finder.results["loss"] if math.isfinite(v)]
    if losses:  # a diverged tail would flatten the part of the curve that matters
        fig.axes[0].set_ylim(min(losses) - 0.05 * abs(min(losses)), min(max(losses), 2 * losses[0]))
    fig.axes[0].set_title(f"{cfg.model.arch}: suggested optim.lr={suggestion:.2g}")
    with atomic_open(run_dir / "lr_find.png", "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    result = {
        "suggestion": float(suggestion),
        "lr": [float(v) for v in finder.results["lr"]],
        "loss": [float(v) for v in finder.results["loss"]],
    }
    write_json(run_dir / "lr_find.json", result)
    command = shlex.join(["vggtune", "train", *_train_overrides(), f"optim.lr={suggestion:.2g}"])
    log.info(
        "Suggested learning rate: %.2g (the steepest fall of the loss; the plot is in %s)\nTo use it:\n  %s",
        suggestion,
        run_dir / "lr_find.png",
        command,
    )
    report_files(
        run_dir,
        {
            "lr_find.png": "loss against learning rate, the suggestion marked",
            "lr_find.json": "the suggestion, and every LR tried with its loss",
        },
    )
    return result


class _EpochZeroGroups(pl.Callback):
    """The schedule's epoch-0 trainable groups (and frozen BatchNorm), for the whole range test."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = cast(Tunable, pl_module)
        apply_schedule(module, module.schedule, 0)


def _train_overrides() -> list[str]:
    """This command's overrides that ``vggtune train`` understands (not lr_find.* or optim.lr)."""
    if not HydraConfig.initialized():
        return []
    return [
        o
        for o in HydraConfig.get().overrides.task
        if not o.lstrip("+~").startswith(("lr_find.", "optim.lr=", "hydra."))
    ]


def run(cfg: DictConfig) -> None:
    lr_find(cfg)
