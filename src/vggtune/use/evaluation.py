"""What ``vggtune eval`` measures: which labelled images to use, and the metrics over them.

The images come from the training run the checkpoint belongs to (its ``split.csv``), from any
folder of class folders, or from a labels CSV. The metrics are torchmetrics' (the same definitions as
the validation and test metrics logged during training).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)

from vggtune.core.errors import UserError
from vggtune.data.discovery import SUBSETS, class_folders, read_split_csv
from vggtune.data.images import IMAGE_EXTENSIONS, list_images
from vggtune.data.labels_csv import read_labels_csv, resolve_csv_path, split_labels
from vggtune.model.module import classification_metrics
from vggtune.model.multilabel import multilabel_metrics, predicted_labels

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Images with the index of their true class in the model's class list."""

    items: list[tuple[Path, int | tuple[int, ...]]]  # multi-label: (path, tuple of class indices)
    source: str  # where they came from, in words
    unknown: dict[str, int] = field(default_factory=dict)  # class folders the model does not know -> images


def check_subset(subset: str) -> str:
    """``subset`` if it names a subset of a training split (train, val, test), else a UserError."""
    if subset not in SUBSETS:
        raise UserError(f"data.subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    return subset


def images_from_run(
    ckpt: Path, class_names: list[str], subset: str = "test", label_delim: str | None = None
) -> LabelledImages:
    """The ``subset`` images of the training run that wrote ``ckpt`` (``<run>/checkpoints/<name>.ckpt``)."""
    check_subset(subset)
    run_dir = ckpt.resolve().parent.parent
    split_file, metrics_file = run_dir / "split.csv", run_dir / "metrics.json"
    if ckpt.resolve().parent.name != "checkpoints" or not split_file.is_file():
        raise UserError(
            f"{ckpt} is not in the checkpoints/ folder of a training run (with split.csv beside it), "
            f"so its {subset} images are unknown: pass data.root=<a folder of class folders>"
        )
    if not metrics_file.is_file():  # written when training ends; it records the data folder
        raise UserError(
            f"{run_dir} has no metrics.json (training did not finish?), so its data folder is "
            "unknown: pass data.root=<a folder of class folders>"
        )
    root = Path(json.loads(metrics_file.read_text(encoding="utf-8"))["data"]["root"])
    if not root.is_dir():
        raise UserError(
            f"the training data folder {root} (from {metrics_file}) no longer exists: "
            "pass data.root=<a folder of class folders> to evaluate on other images"
        )
    rows = read_split_csv(split_file, root, subset)
    if not rows:
        raise UserError(
            f"the training run {run_dir} has no {subset} images (trained with data.test_split=0?): "
            "pass data.subset=val, or data.root=<a folder of class folders>"
        )
    labels: Sequence[tuple[Path, str | tuple[str, ...]]] = rows
    if label_delim is not None:
        labels = [(path, split_labels(text, label_delim)) for path, text in rows]
    labelled = _label(labels, class_names, f"the {subset} split of {run_dir}", label_delim is not None)
    if labelled.unknown:  # the run's own split can only hold the model's classes
        raise UserError(
            f"{split_file} names classes the checkpoint does not know ({', '.join(labelled.unknown)}): "
            "is the checkpoint from another run? Pass data.root=<a folder of class folders>"
        )
    return labelled


def images_from_folder(root: str | Path, class_names: list[str], multilabel: bool = False) -> LabelledImages:
    """Every image in the class folders of ``root``; folders the model has no class for are counted apart."""
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(
            f"data.root {path} {'is a file' if path.exists() else 'does not exist'}: pass a folder of class folders"
        )
    path = path.resolve()
    folders = class_folders(path)
    if not folders:
        raise UserError(
            f"data.root {path} has no class folders: put each class's images in a folder named "
            f"after the class, as for training ({', '.join(class_names[:3])}, ...)"
        )
    if set(folders) <= set(SUBSETS) and not set(folders) & set(class_names):
        raise UserError(
            f"data.root {path} holds {', '.join(folders)} folders, not class folders: "
            f"pass data.root={path / ('test' if 'test' in folders else folders[-1])}"
        )
    rows = [(image, (name,) if multilabel else name) for name in folders for image in list_images(path / name)]
    labelled = _label(rows, class_names, f"the class folders of {path}", multilabel)
    if not labelled.items:
        known = [f for f in folders if f in class_names]
        if known:
            raise UserError(
                f"the class folders {', '.join(known)} in {path} hold no images "
                f"({', '.join(IMAGE_EXTENSIONS)}): add images, or pass another data.root"
            )
        nested = [f for f in folders if set(class_folders(path / f)) & set(class_names)]
        hint = f": pass data.root={path / nested[0]}" if nested else _did_you_mean(folders, class_names)
        raise UserError(
            f"none of the class folders in {path} ({', '.join(folders)}) is a class the model knows "
            f"({', '.join(class_names)}){hint}"
        )
    return labelled


def images_from_csv(
    labels: str | Path,
    root: str | Path | None,
    class_names: list[str],
    subset: str = "test",
    columns: dict | None = None,
    label_delim: str | None = None,
) -> LabelledImages:
    """The rows of a labels CSV (only those of ``subset`` when it has a split column); classes the model
    does not know are counted apart. Bad rows are left out with their line numbers in the log."""
    csv_path = resolve_csv_path(labels, Path(str(root)).expanduser() if root else None)
    rows, rejected = read_labels_csv(
        csv_path,
        Path(str(root)).expanduser().resolve() if root else csv_path.parent,
        verify="header",
        on_bad_image="skip",
        label_delim=label_delim,
        **(columns or {}),
    )
    for bad in rejected.rows[:10]:
        log.warning("  left out %s", bad.reason)
    source, which = f"the rows of {csv_path}", ""
    if rows and rows[0].subset is not None:
        rows = [r for r in rows if r.subset == check_subset(subset)]
        source, which = f"the {subset} rows of {csv_path}", f" with split {subset}"
    if not rows:
        raise UserError(f"{csv_path} has no usable rows{which}: pass another data.subset, or another data.labels")
    if label_delim is not None:
        return _label([(r.path, r.labels(label_delim)) for r in rows], class_names, source, multilabel=True)
    return _label([(r.path, r.label) for r in rows], class_names, source)


def _label(
    rows: Sequence[tuple[Path, str | tuple[str, ...]]], class_names: list[str], source: str, multilabel: bool = False
) -> LabelledImages:
    """Rows of (path, class name), or (path, tuple of label names) when ``multilabel``, as class indices.

    An image with a label the model does not know is left out, and the label counted in ``unknown``.
    """
    index = {name: i for i, name in enumerate(class_names)}
    items: list[tuple[Path, int | tuple[int, ...]]]
    if multilabel:
        items = [(path, tuple(index[n] for n in names)) for path, names in rows if all(n in index for n in names)]
        unknown = Counter(n for _, names in rows for n in names if n not in index)
    else:
        items = [(path, index[name]) for path, name in rows if name in index]
        unknown = Counter(cast(str, name) for _, name in rows if name not in index)  # one name a row here
    return LabelledImages(items, source, dict(sorted(unknown.items())))


def _did_you_mean(folders: list[str], class_names: list[str]) -> str:
    lower = {name.lower(): name for name in class_names}  # "Roses" vs "roses" is the likeliest slip
    hints = [
        f"{f} -> {lower[m[0]]}"
        for f in folders
        if (m := difflib.get_close_matches(f.lower(), list(lower), n=1, cutoff=0.7))
    ]
    return f" (folder names are matched exactly; close ones: {', '.join(hints)})" if hints else ""


def describe_data(data: LabelledImages, evaluated: int, skipped: dict[str, str]) -> dict:
    """What ``metrics.json`` says about the images: where from, how many evaluated, which left out and why."""
    return {"source": data.source, "images": evaluated, "unreadable": skipped, "unknown_classes": data.unknown}


def tta_gain(mode: str, views: int, metrics: dict[str, float], plain: dict[str, float]) -> dict:
    """What test-time augmentation changed: every metric of the plain view alone, and the gain over it."""
    return {
        "mode": mode,
        "views": views,
        **{f"{k}_without": v for k, v in plain.items()},
        **{f"{k}_gain": metrics[k] - v for k, v in plain.items()},
    }


def describe_unknown(unknown: dict[str, int], class_names: list[str]) -> str:
    """One line naming the class folders that were left out because the model has no such class."""
    listed = ", ".join(f"{name} ({n} images)" for name, n in unknown.items())
    return (
        f"left out {sum(unknown.values())} images in class folders the model does not know: {listed}"
        f"{_did_you_mean(list(unknown), class_names)}; the model's classes are {', '.join(class_names)}"
    )


@dataclass
class EvalResult:
    """Overall metrics, per-class rows and the confusion matrix (rows: true class, columns: predicted)."""

    metrics: dict[str, float]
    per_class: list[dict]
    confusion: torch.Tensor


def compute_metrics(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> EvalResult:
    """Top-1 (and, with 6+ classes, top-5) accuracy, macro F1, per-class precision/recall/F1, confusion matrix.

    Macro F1 averages over the classes that occur among the true or predicted labels. In the
    per-class rows, precision is None for a class never predicted and recall None for a class
    with no images, rather than a 0 that would read as a failure.
    """
    n = len(class_names)
    overall = classification_metrics(n, prefix="")
    per_class = MetricCollection(
        {
            "precision": MulticlassPrecision(n, average="none"),
            "recall": MulticlassRecall(n, average="none"),
            "f1": MulticlassF1Score(n, average="none"),
        },
        # one group on purpose: the same per-class stat scores, not merged by chance
        compute_groups=[["precision", "recall", "f1"]],
    )
    confusion = MulticlassConfusionMatrix(n)
    for metric in (overall, per_class, confusion):
        metric.update(probs, targets)
    scores = {k: v.tolist() for k, v in per_class.compute().items()}
    matrix = confusion.compute()
    support, predicted = matrix.sum(dim=1).tolist(), matrix.sum(dim=0).tolist()
    rows = [
        {
            "class": name,
            "images": support[i],
            "predicted": predicted[i],
            "precision": scores["precision"][i] if predicted[i] else None,
            "recall": scores["recall"][i] if support[i] else None,
            "f1": scores["f1"][i] if support[i] or predicted[i] else None,
        }
        for i, name in enumerate(class_names)
    ]
    return EvalResult({k: float(v) for k, v in overall.compute().items()}, rows, matrix)


def compute_multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, class_names: list[str], thresholds: list[float]
) -> EvalResult:
    """Subset accuracy, macro mAP and macro F1 at each label's threshold, and per-label scores.

    ``targets`` is multi-hot (images, labels). The per-label rows hold precision, recall and F1 at
    the label's threshold, its average precision (None for a label no image has), and the counts.
    The ``confusion`` of the result is the (labels, 2) table of images with / predicted with each label.
    """
    n = len(class_names)
    predicted = predicted_labels(probs, thresholds)
    truth = targets.long()
    hard = predicted.long()  # binarised here, per label; torchmetrics takes 0/1 integers as decided
    overall = multilabel_metrics(n, prefix="")
    overall["map"].update(probs, truth)
    for name in ("acc", "f1"):
        overall[name].update(hard, truth)
    per_label = MetricCollection(
        {
            "precision": MultilabelPrecision(n, average="none"),
            "recall": MultilabelRecall(n, average="none"),
            "f1": MultilabelF1Score(n, average="none"),
        },
        compute_groups=[["precision", "recall", "f1"]],
    )
    per_label.update(hard, truth)
    ap = MultilabelAveragePrecision(n, average="none")
    ap.update(probs, truth)
    scores = {k: v.tolist() for k, v in per_label.compute().items()}
    scores["ap"] = ap.compute().tolist()
    support, made = truth.sum(dim=0).tolist(), predicted.sum(dim=0).tolist()
    rows = [
        {
            "label": name,
            "images": support[i],
            "predicted": made[i],
            "threshold": float(thresholds[i]),
            "precision": scores["precision"][i] if made[i] else None,
            "recall": scores["recall"][i] if support[i] else None,
            "f1": scores["f1"][i] if support[i] or made[i] else None,
            "ap": scores["ap"][i] if support[i] else None,
        }
        for i, name in enumerate(class_names)
    ]
    metrics = {k: float(v) for k, v in overall.compute().items()}
    return EvalResult(metrics, rows, torch.tensor([support, made]).T)
