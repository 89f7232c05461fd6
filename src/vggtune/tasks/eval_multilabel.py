"""``vggtune eval`` of a multi-label checkpoint: subset accuracy, mAP, F1 at each label's threshold,
the per-label table and chart, and the images whose labels are wrong."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch

from vggtune.data.datasets import multi_hot
from vggtune.model.multilabel import predicted_labels
from vggtune.tasks.runs import report_files, score_cell, write_csv, write_json
from vggtune.use.evaluation import LabelledImages, compute_multilabel_metrics, describe_data, tta_gain
from vggtune.use.inference import LoadedModel, Predictions

log = logging.getLogger(__name__)


def evaluate_multilabel(
    run_dir: Path,
    model: LoadedModel,
    data: LabelledImages,
    pred: Predictions,
    paths: list[Path],
    skipped: dict,
    thresholds: list[float],
    tta: str,
    fixed: bool = False,
) -> dict:
    """eval of a multi-label model: subset accuracy, mAP, F1, per-label table and chart, wrong images."""
    names = model.class_names
    targets = torch.stack([multi_hot(cast(tuple, data.items[i][1]), len(names)) for i in pred.indices])
    result = compute_multilabel_metrics(pred.probs, targets, names, thresholds)
    gain = {"mode": "none"}
    if tta != "none":
        plain = compute_multilabel_metrics(pred.plain_probs, targets, names, thresholds).metrics
        gain = tta_gain(tta, int(pred.logits.shape[1]), result.metrics, plain)
    summary = {
        "checkpoint": str(model.path.resolve()),
        "data": describe_data(data, len(pred.indices), skipped),
        "multilabel": True,
        "metrics": result.metrics,
        "per_label": result.per_class,
        "class_names": names,
        "thresholds": dict(zip(names, thresholds)),
        "tta": gain,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", summary)
    cols = ["label", "precision", "recall", "f1", "ap", "threshold", "images", "predicted"]
    write_csv(run_dir / "per_label.csv", cols, ([score_cell(row[c]) for c in cols] for row in result.per_class))
    mistakes = _write_multilabel_mistakes(
        run_dir / "misclassified.csv",
        [paths[i] for i in pred.indices],
        pred.probs,
        targets,
        names,
        thresholds,
        cast(str, model.label_delim),  # a multi-label model has one
    )
    _plot_per_label(run_dir / "per_label.png", pred.probs, targets, thresholds, names)
    m = result.metrics
    lines = [
        f"{len(pred.indices)} images: subset accuracy {m['acc']:.4f}   macro mAP {m['map']:.4f}   "
        f"macro F1 {m['f1']:.4f} "
        + (f"(every label at {thresholds[0]:g})" if fixed else "(each label at its threshold)")
    ]
    if tta != "none":
        lines.append(
            f"  tta={tta}: mAP {gain['map_without']:.4f} -> {m['map']:.4f} ({gain['map_gain']:+.4f}), "
            f"subset accuracy {gain['acc_without']:.4f} -> {m['acc']:.4f} ({gain['acc_gain']:+.4f})"
        )
    width = max(len("label"), *(len(n) for n in names))
    lines += [
        "",
        f"  {'label'.ljust(width)}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'AP':>9}  {'threshold':>9}  "
        f"{'images':>7}",
    ]
    for r in result.per_class:
        cells = "".join(
            f"  {'-' if r[k] is None else format(r[k], '.4f'):>9}" for k in ("precision", "recall", "f1", "ap")
        )
        lines.append(f"  {r['label'].ljust(width)}{cells}  {r['threshold']:>9.3f}  {r['images']:>7}")
    log.info("\n".join(lines))
    report_files(
        run_dir,
        {
            "metrics.json": "subset accuracy, macro mAP and F1, per-label scores and thresholds, which images",
            "per_label.csv": "precision, recall, F1, AP, threshold, images and predictions per label",
            "per_label.png": "precision, recall and F1 of each label",
            "misclassified.csv": f"the {mistakes} image(s) whose predicted labels differ from the true ones",
        },
    )
    return summary


def _write_multilabel_mistakes(
    path: Path,
    paths: list[Path],
    probs: torch.Tensor,
    targets: torch.Tensor,
    names: list[str],
    thresholds: list[float],
    delim: str,
) -> int:
    """Images whose labels over threshold are not their true labels, the most wrong labels first."""
    predicted, truth = predicted_labels(probs, thresholds), targets > 0.5
    wrong = (predicted != truth).sum(dim=1)
    order = sorted((i for i in range(len(paths)) if wrong[i]), key=lambda i: -int(wrong[i]))

    def text(mask) -> str:
        return delim.join(names[j] for j in mask.nonzero().flatten().tolist())

    write_csv(
        path,
        ["path", "true", "predicted", "missed", "extra"],
        (
            [
                str(paths[i]),
                text(truth[i]),
                text(predicted[i]),
                text(truth[i] & ~predicted[i]),
                text(predicted[i] & ~truth[i]),
            ]
            for i in order
        ),
    )
    return len(order)


def _plot_per_label(
    path: Path, probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float], names: list[str]
) -> None:
    """The per-label precision/recall/F1 bars that TensorBoard shows, at each label's threshold."""
    from vggtune.training.figures import per_label_figure

    predicted, truth = predicted_labels(probs, thresholds), targets > 0.5
    tp, fp = (predicted & truth).sum(0), (predicted & ~truth).sum(0)
    fn, tn = (~predicted & truth).sum(0), (~predicted & ~truth).sum(0)
    stats = torch.stack([tp, fp, tn, fn, tp + fn], dim=1).numpy()
    per_label_figure(stats, names, f"Per label at its threshold ({len(probs)} images)").savefig(path, dpi=100)
