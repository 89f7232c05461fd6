"""What TensorBoard shows during ``vggtune train``: Lightning callbacks, one concern each, and their factory.

Scalars go through ``pl_module.log`` (Lightning's logger writes on rank zero only). Text and the
HPARAMS session go through ``logger.experiment``, a no-op dummy on the other ranks; their writers
are guarded with ``rank_zero_only`` all the same. The validation images are in
:mod:`vggtune.training.tensorboard_images`.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vggtune.core.checks import check_positive_int
from vggtune.training.tensorboard_images import ConfusionMatrixImage, PerLabelScores, PredictionGrid, tensorboard_logger

# The HPARAMS table's metric columns. TensorBoard fills them from these scalar tags of the same run,
# so they show the latest values while a run trains and the final ones after it.
HPARAM_METRICS = ("val/acc", "val/f1", "val/loss")
# Config groups that describe a run; paths, callbacks, logger and hydra say nothing about the model.
HPARAM_GROUPS = ("model", "finetune", "optim", "scheduler", "data", "trainer")
# Keys that change how a run is shown or loaded, not what it learns, and copies of other keys
# (data.seed is seed, data.arch is model.arch): columns that would only crowd the table.
HPARAM_SKIP = (
    "_partial_",
    "trainer._target_",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.pin_memory",
    "data.verify",
    "data.on_bad_image",
    "data.cache_dir",
    "data.seed",
    "data.arch",
)


def tensorboard_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """TensorBoard's own callbacks (with ``logger=tensorboard``): HPARAMS, data text, and the images if on."""
    every = check_positive_int(
        "logger.images_every_n_epochs", cfg.logger.get("images_every_n_epochs", 1), allow_zero=True
    )
    grid = check_positive_int("logger.grid_images", cfg.logger.get("grid_images", 16))
    callbacks = [HparamsSession(flat_config(cfg)), DataText()]
    if every:
        callbacks += [ConfusionMatrixImage(every), PerLabelScores(every), PredictionGrid(every, grid)]
    return callbacks


def flat_config(cfg: DictConfig) -> dict[str, int | float | str]:
    """The run config as ``group.key`` -> number or string: the HPARAMS table's columns."""
    out: dict = {"seed": cfg.get("seed")}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        elif not prefix.endswith(HPARAM_SKIP):
            out[prefix] = node

    for group in HPARAM_GROUPS:
        if cfg.get(group) is not None:
            walk(group, OmegaConf.to_container(cfg[group], resolve=True))
    # Numbers and strings only; bools as words (torch's hparams() would store 1 and 0); None: an empty cell.
    return {k: _hparam_value(v) for k, v in out.items() if v is not None}


def _hparam_value(value) -> int | float | str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, (int, float, str)) else str(value)


class EpochSpeed(pl.Callback):
    """Logs (to every tracker) ``speed/epoch_seconds`` (training and validation) and ``speed/train_images_per_second``.

    Nothing in the step loop waits for the device: batch sizes come from tensor shapes (host
    metadata) and the clock is read on the host. The device is synchronised once per training
    stretch (when validation starts or the epoch ends), so that queued GPU work is timed too.
    Under DDP the throughput is summed over ranks and the epoch time is the slowest rank's.
    """

    def __init__(self):
        self._epoch_start = self._stretch_start = None
        self._stretch_images = self._images = 0
        self._train_seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._stretch_start = time.perf_counter()
        self._stretch_images = self._images = 0
        self._train_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stretch_images += int(batch[0].shape[0])

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_stretch(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_start is not None:  # training goes on (validation may run mid-epoch)
            self._stretch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_stretch(pl_module)
        if self._epoch_start is None:
            return
        pl_module.log(
            "speed/epoch_seconds",
            time.perf_counter() - self._epoch_start,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )
        if self._train_seconds > 0:
            pl_module.log(
                "speed/train_images_per_second",
                self._images / self._train_seconds,
                on_epoch=True,
                sync_dist=True,
                reduce_fx="sum",
            )
        self._epoch_start = None

    def _end_stretch(self, pl_module: pl.LightningModule) -> None:
        if self._stretch_start is None or not self._stretch_images:
            return  # the sanity check, or a stretch without training batches
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._train_seconds += time.perf_counter() - self._stretch_start
        self._images += self._stretch_images
        self._stretch_start, self._stretch_images = None, 0


class HparamsSession(pl.Callback):
    """Writes the HPARAMS session: the flattened config with ``val/acc``, ``val/f1``, ``val/loss`` as metrics
    (and ``val/map`` with several labels per image).

    Lightning's ``log_hyperparams(params, metrics)`` would also write each metric as a scalar at the
    given step (step 0 by default: a false first point on every validation curve). TensorBoard's
    hparams plugin reads metric values from the run's scalars anyway, so this writes only the
    session summaries, at the start: the table fills in as validation runs, with no ``hp_metric``.
    """

    def __init__(self, params: dict):
        self.params = params
        self._end = None

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.utils.tensorboard.summary import hparams

        logger = tensorboard_logger(trainer)
        if logger is None:
            return
        metrics = HPARAM_METRICS + (("val/map",) if getattr(pl_module, "multilabel", False) else ())
        experiment, start, self._end = hparams(self.params, dict.fromkeys(metrics, 0.0))
        writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        writer.add_summary(experiment)
        writer.add_summary(start)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The end record marks the session finished; a crashed run shows no status instead. Not in
        # on_fit_end: Lightning has closed the writer by then, and writing would start a new event file.
        logger = tensorboard_logger(trainer)
        if logger is not None and self._end is not None:
            logger.experiment._get_file_writer().add_summary(self._end)
            logger.experiment.flush()


class DataText(pl.Callback):
    """Text tab: ``data/classes`` (label order) and ``data/images_per_class`` (per subset, with totals)."""

    @rank_zero_only
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        # Trainer.datamodule: set by Lightning's DataConnector, not declared on the class (Lightning 2.6)
        split = getattr(trainer.datamodule, "split", None)  # type: ignore[attr-defined]
        if logger is None or split is None:
            return
        from tensorboard.plugins.text.summary_v2 import text_pb

        # SummaryWriter.add_text would append "/text_summary" to each tag; text_pb keeps the tag as named.
        writer = logger.experiment._get_file_writer()
        classes = "\n".join(f"| {i} | {name} |" for i, name in enumerate(split.classes))
        writer.add_summary(
            text_pb(
                "data/classes",
                f"{len(split.classes)} classes, in the order of the model's "
                f"outputs:\n\n| index | class |\n|---|---|\n{classes}",
            ),
            0,
        )
        writer.add_summary(text_pb("data/images_per_class", images_per_class_table(split.counts())), 0)


def images_per_class_table(counts: dict[str, dict[str, int]]) -> str:
    """A markdown table: one row per class, one column per subset, totals in the last row and column."""
    subsets = list(counts)
    classes = list(next(iter(counts.values()), {}))
    lines = ["| class | " + " | ".join(subsets) + " | all |", "|---" * (len(subsets) + 2) + "|"]
    for name in classes:
        row = [counts[s][name] for s in subsets]
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [sum(counts[s].values()) for s in subsets]
    lines.append("| **all** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return "\n".join(lines)
