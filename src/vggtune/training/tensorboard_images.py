"""The images TensorBoard shows during training: the validation confusion matrix (per-label scores with
several labels per image) and a grid of predictions; the figures themselves are in ``figures.py``.

Each is a Lightning callback fed by what ``VGGClassifier.validation_step`` returns (detached
probabilities and targets, on the device) and the batch's images. The collective steps (the
confusion matrix's sync, the gather of grid candidates) run on every DDP rank; drawing and writing
happen on rank zero only. Figures are drawn with ``matplotlib.figure.Figure`` and the Agg canvas
directly (no pyplot), so nothing depends on a display or on pyplot's global state, and rendered to
arrays for ``SummaryWriter.add_image``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelStatScores

if TYPE_CHECKING:  # the callbacks' module; a LightningModule's own attributes type as Tensor | Module
    from lightning.pytorch.utilities.parsing import AttributeDict

    from vggtune.model.module import VGGClassifier
from vggtune.training.figures import (
    confusion_matrix_figure,
    figure_to_array,
    multilabel_grid_figure,
    per_label_figure,
    prediction_grid_figure,
)


def tensorboard_logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger, or None when the run logs elsewhere (or nowhere)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class _ValidationImage(pl.Callback):
    """One image per due validation epoch: ``update`` per batch, ``collect`` on every rank, ``draw`` on rank zero.

    Due: every ``every_n_epochs``-th epoch and the last one, never the sanity check. Uses the
    ``probs`` and ``target`` that ``VGGClassifier.validation_step`` returns.
    """

    tag = ""
    multilabel: bool | None = False  # the kind of task the image is for (None: either)

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs
        self._active = False

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation epoch gets an image."""
        if trainer.sanity_checking:
            return False
        module = getattr(trainer, "lightning_module", None)
        if self.multilabel is not None and bool(getattr(module, "multilabel", False)) != self.multilabel:
            return False
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = self.due(trainer)
        if self._active:
            self.reset(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active and isinstance(outputs, dict):
            self.update(outputs["probs"], outputs["target"], batch[0])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        data = self.collect(trainer, pl_module)  # collective under DDP: every rank takes part
        self._write(trainer, pl_module, data)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, data) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or data is None:
            return
        title = f"validation, epoch {trainer.current_epoch}"
        image = figure_to_array(self.draw(data, cast("VGGClassifier", pl_module).class_names, title))
        # The step Lightning gives this epoch's validation scalars, so images and curves line up.
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        logger.experiment.add_image(self.tag, image, step, dataformats="HWC")

    def reset(self, pl_module: pl.LightningModule) -> None:
        """Forget the previous epoch, before the first batch."""
        raise NotImplementedError

    def update(self, probs: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> None:
        """Take one batch on the device, without reading its values on the host."""
        raise NotImplementedError

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """The epoch's data on the host, gathered over DDP ranks (called on every rank), or None."""
        raise NotImplementedError

    def draw(self, data, class_names: list[str], title: str):
        """The matplotlib Figure of what :meth:`collect` returned."""
        raise NotImplementedError


class ConfusionMatrixImage(_ValidationImage):
    """``val/confusion_matrix``: rows the true class, normalised per row, class names on both axes."""

    tag = "val/confusion_matrix"

    def __init__(self, every_n_epochs: int):
        super().__init__(every_n_epochs)
        self.matrix: MulticlassConfusionMatrix | None = None

    def reset(self, pl_module: pl.LightningModule) -> None:
        if self.matrix is None:
            # The module's outputs are well-formed; checking them would cost extra host syncs per batch.
            n = len(cast("VGGClassifier", pl_module).class_names)
            self.matrix = MulticlassConfusionMatrix(n, validate_args=False)
        self.matrix.to(pl_module.device).reset()

    def update(self, probs: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> None:
        assert self.matrix is not None  # reset() made it
        self.matrix.update(probs, target)  # on the device (a bincount, like the module's own val metrics)

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> np.ndarray:
        assert self.matrix is not None
        return self.matrix.compute().cpu().numpy()  # torchmetrics sums over DDP ranks here

    def draw(self, data: np.ndarray, class_names: list[str], title: str):
        return confusion_matrix_figure(data, class_names, f"Confusion matrix, {title}")


class PerLabelScores(_ValidationImage):
    """``val/per_label`` (several labels per image): each label's precision, recall and F1 at the
    metrics' threshold, in place of the confusion matrix."""

    tag = "val/per_label"
    multilabel = True

    def __init__(self, every_n_epochs: int):
        super().__init__(every_n_epochs)
        self.stats: MultilabelStatScores | None = None
        self.threshold = 0.5

    def reset(self, pl_module: pl.LightningModule) -> None:
        if self.stats is None:
            module = cast("VGGClassifier", pl_module)
            self.threshold = module.metric_threshold
            self.stats = MultilabelStatScores(
                len(module.class_names), threshold=self.threshold, average=None, validate_args=False
            )
        self.stats.to(pl_module.device).reset()

    def update(self, probs: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> None:
        assert self.stats is not None  # reset() made it
        self.stats.update(probs, target.long())

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> np.ndarray:
        assert self.stats is not None
        return self.stats.compute().cpu().numpy()  # summed over DDP ranks

    def draw(self, data: np.ndarray, class_names: list[str], title: str):
        return per_label_figure(data, class_names, f"Per label at threshold {self.threshold:g}, {title}")


class PredictionGrid(_ValidationImage):
    """``val/predictions``: ``n_images`` validation images, misclassified first, with true/predicted label.

    The candidates are kept on the device with fixed shapes and ``topk`` (no host sync per batch):
    mistakes rank first, the most confident mistake ahead; then hits, the least sure ahead.
    """

    tag = "val/predictions"
    multilabel = None  # both: a multi-label grid lists the labels over the threshold

    def __init__(self, every_n_epochs: int, n_images: int = 16):
        super().__init__(every_n_epochs)
        self.n_images = n_images
        self._best: dict[str, torch.Tensor] | None = None
        self._threshold: float | None = None  # multi-label: the metrics' threshold

    def reset(self, pl_module: pl.LightningModule) -> None:
        self._best = None
        self._threshold = (
            cast("VGGClassifier", pl_module).metric_threshold if getattr(pl_module, "multilabel", False) else None
        )

    def update(self, probs: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> None:
        if images.ndim != 4:
            return  # data.cache_features: the batches hold backbone outputs, there are no images to show
        if self._threshold is not None:  # mistakes: labels wrong, most first; hits: the least sure first
            wrong_labels = ((probs >= self._threshold) != (target > 0.5)).float().sum(dim=1)
            margin = (probs - self._threshold).abs().min(dim=1).values
            score = torch.where(wrong_labels > 0, 2.0 + wrong_labels / probs.shape[1], 1.0 - margin)
            batch = {"score": score, "image": images.detach().float(), "target": target.float(), "probs": probs}
        else:
            conf, pred = probs.max(dim=1)
            wrong = pred != target
            score = torch.where(wrong, 2.0 + conf, 1.0 - conf)  # mistakes in [2, 3], hits in [0, 1]
            batch = {"score": score, "image": images.detach().float(), "target": target, "pred": pred, "conf": conf}
        if self._best is None:  # pad with never-chosen slots, so every rank gathers the same shapes
            self._best = {k: v[:1].expand(self.n_images, *v.shape[1:]).clone() for k, v in batch.items()}
            self._best["score"].fill_(-1.0)
        self._best = _top({k: torch.cat([self._best[k], batch[k]]) for k in batch}, self.n_images)

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict | None:
        if self._best is None:
            return None
        best = self._best
        if trainer.world_size > 1:
            best = {k: v.flatten(0, 1) for k, v in cast(dict, pl_module.all_gather(best)).items()}  # dict in, dict out
        best = {k: v.cpu() for k, v in _top(best, self.n_images).items()}
        keep = best["score"] >= 0
        prep = cast("AttributeDict", pl_module.hparams).preprocessing  # undo the checkpoint's own normalisation
        mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
        images = (best["image"][keep] * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return {"images": images, **{k: v[keep].tolist() for k, v in best.items() if k not in ("image", "score")}}

    def draw(self, data: dict, class_names: list[str], title: str):
        if self._threshold is not None:
            return multilabel_grid_figure(
                data["images"],
                data["target"],
                data["probs"],
                self._threshold,
                class_names,
                f"Predictions (labels over {self._threshold:g}; mistakes first), {title}",
            )
        return prediction_grid_figure(
            data["images"],
            data["target"],
            data["pred"],
            data["conf"],
            class_names,
            f"Predictions (misclassified first), {title}",
        )


def _top(items: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The ``k`` entries with the highest ``score`` (all of them if fewer), in that order."""
    index = items["score"].topk(min(k, len(items["score"]))).indices
    return {key: value[index] for key, value in items.items()}
