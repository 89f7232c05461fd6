"""The LightningModule: torchvision's VGG with a new head, its metrics, optimizer and schedule."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassStatScores

from vggtune import __version__
from vggtune.model import calibration
from vggtune.model import multilabel as ml
from vggtune.model.arch import frozen_trunk
from vggtune.model.averaging import averaged_state_dict
from vggtune.model.finetune import Schedule, param_groups
from vggtune.model.resume import batches_done_in_epoch
from vggtune.model.weights import build_vgg

DEFAULT_OPTIM = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 1e-4}
DEFAULT_SCHEDULER = {"_target_": "vggtune.model.schedulers.warmup_cosine", "_partial_": True}
CHECKPOINT_FORMAT = 1


class BalancedAccuracy(MulticlassStatScores):
    """The mean recall over the classes that have images (scikit-learn's ``balanced_accuracy_score``).

    torchmetrics' ``MulticlassAccuracy(average="macro")`` and ``MulticlassRecall(average="macro")``
    count a class that is predicted but has no images as recall 0; scikit-learn leaves it out, and a
    balanced accuracy is defined over the true classes. The per-class counts are torchmetrics' own.
    """

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, _, _, _, support = super().compute().unbind(-1)
        present = support > 0
        return (tp[present].float() / support[present]).mean() if present.any() else torch.tensor(0.0)


TOP5_MIN_CLASSES = 6  # with 5 classes or fewer, every label is among the top 5: top-5 accuracy is always 1


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 accuracy, balanced accuracy (macro recall), macro F1 and (with 6 classes or more) top-5 accuracy.

    ``compute_groups=False``: torchmetrics' default merges metrics whose states are equal after
    the first ``update`` and computes them from one state from then on. Top-5 accuracy and macro
    F1 look equal on a first batch of one class that the model gets right, and ``f1`` then reported
    the top-5 accuracy for the whole run (the trap in shared/NOTES.md). Three metrics per step
    cost nothing next to a VGG forward.
    """
    metrics: dict[str, Metric | MetricCollection] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "bal_acc": BalancedAccuracy(num_classes),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes >= TOP5_MIN_CLASSES:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


TRAIN_METRICS = ("train_acc", "train_loss")  # accumulated over an epoch


class VGGClassifier(pl.LightningModule):
    """A VGG classifier over ``class_names``; every argument is a plain value, saved as a hyperparameter.

    ``optim`` and ``scheduler`` are Hydra configs (``_target_`` + ``_partial_``) instantiated in
    :meth:`configure_optimizers`; ``finetune`` holds the :class:`~vggtune.model.finetune.Schedule` fields;
    ``preprocessing`` is what a later ``eval``/``predict``/``export`` needs to feed the model.
    ``label_delim`` (not None): several labels per image (BCE, sigmoid outputs), written in label
    cells joined by it; ``threshold`` is then the cut for every label, or None to choose one per label
    on each validation epoch. ``label_smoothing`` applies to the training loss only.
    """

    class_weights: torch.Tensor | None  # a buffer (register_buffer below): declared for the type checker

    def __init__(
        self,
        arch: str,
        class_names: list[str],
        weights: str = "imagenet",
        dropout: float = 0.5,
        preprocessing: dict | None = None,
        optim: dict | None = None,
        scheduler: dict | None = None,
        finetune: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
        head: str = "vgg",
        class_weights: list[float] | None = None,
        label_delim: str | None = None,
        threshold: float | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        # In the checkpoint only: the trackers get the run's flat config instead (training.trackers.TrackerParams).
        self.save_hyperparameters(logger=False)
        self.class_names = list(class_names)
        self.schedule = Schedule(**(finetune or {}))
        self.model = build_vgg(arch, len(self.class_names), weights, dropout, head)
        # data.balance=loss: the training loss weighs each class (validation and test losses do not).
        # Not persistent: the hyperparameter rebuilds it, and checkpoints keep the same keys.
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)
        self.frozen_eval: list[torch.nn.Module] = []  # BatchNorm/Dropout of frozen groups (finetune.py)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()  # in place: state-dict keys keep their names (no "_orig_mod.")
        n = len(self.class_names)
        self.multilabel = label_delim is not None
        if self.multilabel:  # at the fixed threshold if one is given, else at 0.5 (val/f1_tuned: each label's own)
            cut = ml.DEFAULT_THRESHOLD if threshold is None else float(threshold)
            self.train_acc = ml.multilabel_metrics(n, "", cut)["acc"]
            self.val_metrics, self.test_metrics = (
                ml.multilabel_metrics(n, "val/", cut),
                ml.multilabel_metrics(n, "test/", cut),
            )
        else:
            self.train_acc = MulticlassAccuracy(n, average="micro")
            self.val_metrics = classification_metrics(n, "val/")
            self.test_metrics = classification_metrics(n, "test/")
        self.train_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        # Every validation logit and target of the epoch, gathered across ranks, for the temperature.
        self.val_logits, self.val_targets = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        # {"temperature", "ece", ...} fitted on the last validation epoch (model/calibration.py); saved in
        # every checkpoint, so best.ckpt holds the temperature of its own weights.
        self.calibration: dict | None = None
        # Multi-label: each label's threshold, chosen on the last validation epoch (or ``threshold`` for all).
        self.thresholds: list[float] | None = (
            [float(threshold)] * n if self.multilabel and threshold is not None else None
        )
        self._resumed_acc_best: float | None = None  # torchmetrics states are not in the state dict
        self._resumed_train_metrics: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised image batch, or for a batch of cached backbone outputs (2-D)."""
        if x.ndim == 2:  # vggtune.data.feature_cache: fc7 outputs (4096) feed the head, pooled conv outputs fc6
            return frozen_trunk(self.model, train_fc=x.shape[1] != self.model.classifier[6].in_features)[1](x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but BatchNorm and Dropout layers of frozen groups stay in eval mode."""
        super().train(mode)
        if mode:
            for m in self.frozen_eval:
                m.eval()
        return self

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation
        if self._resumed_acc_best is not None:  # a resumed run goes on from the best before the interruption
            self.val_acc_best.update(torch.tensor(self._resumed_acc_best))
        if self._resumed_train_metrics and batches_done_in_epoch(self.trainer):
            for name, states in self._resumed_train_metrics.items():
                metric = getattr(self, name)
                for key, value in states.items():
                    setattr(metric, key, value.to(self.device))
                metric._update_count = 1  # torchmetrics warns on compute() before any update()
        self._resumed_train_metrics = None

    def loss(
        self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """Cross-entropy over the classes (``y``: class indices, or class shares after MixUp/CutMix), or
        (multi-label) binary cross-entropy per label."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)

    @property
    def metric_threshold(self) -> float:
        """Multi-label: the cut that the logged metrics (and TensorBoard's images) use for every label."""
        threshold = self.hparams.get("threshold")
        return ml.DEFAULT_THRESHOLD if threshold is None else float(threshold)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes, or (multi-label) a sigmoid per label."""
        return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)

    def _metric_target(self, y: torch.Tensor) -> torch.Tensor:
        return y.long() if self.multilabel else y  # torchmetrics' multi-label metrics take 0/1 integers

    def training_step(self, batch, batch_idx):
        x, y = batch  # y: class shares (one row per image) after data.mixup / data.cutmix
        logits = self(x)
        loss = self.loss(logits, y, self.class_weights, self.hparams.get("label_smoothing", 0.0))
        mixed = not self.multilabel and y.ndim == 2
        self.train_acc(logits, y.argmax(dim=1) if mixed else self._metric_target(y))  # the larger share's class
        self.train_loss(loss.detach())
        # The step loss is this rank's; the epoch values are torchmetrics metrics, reduced across ranks.
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        # Detached probabilities and targets, for the callbacks that draw the confusion matrix and the
        # prediction grid (vggtune.training.tensorboard); they stay on the device.
        return self._eval_step(batch, self.val_metrics, "val/loss")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test/loss")

    def _eval_step(self, batch, metrics: MetricCollection, loss_name: str) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        self.log(loss_name, self.loss(logits, y), on_epoch=True, prog_bar=loss_name == "val/loss", sync_dist=True)
        if self.multilabel and metrics is self.test_metrics and self.thresholds is not None:
            # test/* as eval measures them: each label at the checkpoint's threshold (mAP needs none)
            hard = ml.predicted_labels(logits.detach().float().sigmoid(), self.thresholds).long()
            metrics["map"].update(logits, y.long())
            for name in ("acc", "f1"):
                metrics[name].update(hard, y.long())
        else:
            metrics.update(logits, self._metric_target(y))
        if metrics is self.val_metrics and self._trainer is not None and not self._trainer.sanity_checking:
            self.val_logits.update(logits.detach().float())
            self.val_targets.update(y.float() if self.multilabel else y)
        return {"probs": self.probabilities(logits.detach().float()), "target": y}

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_acc_best(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)
            self._fit_on_validation()

    def _fit_on_validation(self) -> None:
        """From this epoch's validation logits (gathered from every rank, so the same on each): the
        temperature, logged with the ECE before and after; multi-label, each label's threshold."""
        if not self.val_targets.update_called:
            return
        logits, targets = self.val_logits.compute(), self.val_targets.compute()
        self.val_logits.reset()
        self.val_targets.reset()
        if self.multilabel:
            if self.hparams["threshold"] is None:
                self.thresholds = ml.best_thresholds(logits.sigmoid(), targets)
                self.log("val/f1_tuned", ml.tuned_f1(logits.sigmoid(), targets, self.thresholds))
            return
        targets = targets.long()
        temperature = calibration.fit_temperature(logits, targets)
        if temperature is None:  # every validation image right: nothing to fit, and no temperature is kept
            self.calibration = None
            self.log("val/ece", calibration.calibration_error(logits.softmax(dim=1), targets))
            return
        summary = calibration.summarise(logits.cpu(), targets.cpu(), temperature)
        self.calibration = {**summary, "fitted_on": "val", "epoch": int(self.current_epoch)}
        self.log_dict(
            {"val/temperature": temperature, "val/ece": summary["ece"], "val/ece_calibrated": summary["ece_calibrated"]}
        )

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(self(x))

    def configure_optimizers(self):
        optim = dict(self.hparams["optim"] or DEFAULT_OPTIM)
        groups = param_groups(self.model, self.schedule, float(optim["lr"]))
        optimizer = instantiate(optim)(groups)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        sched = instantiate(dict(self.hparams["scheduler"] or DEFAULT_SCHEDULER))(
            optimizer=optimizer, total_steps=total, steps_per_epoch=per_epoch
        )
        return {"optimizer": optimizer, "lr_scheduler": {**sched, "name": "lr"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Marks the file as ours, so that eval/predict/export can refuse other projects' checkpoints.
        checkpoint["vggtune"] = {"format": CHECKPOINT_FORMAT, "version": __version__}
        if "current_model_state" not in checkpoint and "optimizer_states" not in checkpoint:  # weights only
            averaged = averaged_state_dict(self._trainer)  # callbacks=[default,ema]: the weights validated
            if averaged is not None:
                checkpoint["state_dict"] = averaged
        best = float(self.val_acc_best.max_value)
        if best != float("-inf"):
            checkpoint["vggtune"]["val_acc_best"] = best
        if self.calibration is not None:
            checkpoint["vggtune"]["calibration"] = dict(self.calibration)
        if self.thresholds is not None:
            checkpoint["vggtune"]["thresholds"] = list(self.thresholds)
        # Part-way through an epoch: its training metrics so far, so that the resumed epoch's train/acc
        # and train/loss count every batch. One process's share only, so not under DDP.
        if batches_done_in_epoch(self._trainer) and self.trainer.world_size == 1:
            checkpoint["vggtune"]["train_metrics"] = {
                name: {k: v.detach().cpu().clone() for k, v in getattr(self, name).metric_state.items()}
                for name in TRAIN_METRICS
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        ours = checkpoint.get("vggtune") or {}
        self._resumed_acc_best = ours.get("val_acc_best")
        self._resumed_train_metrics = ours.get("train_metrics")
        self.calibration = ours.get("calibration")
        if ours.get("thresholds") is not None:
            self.thresholds = [float(t) for t in ours["thresholds"]]

    @property
    def temperature(self) -> float:
        """The fitted temperature, or 1.0 (no change) when the model was never validated."""
        return float((self.calibration or {}).get("temperature", 1.0))
