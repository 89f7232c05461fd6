"""``vggtune eval``: metrics, per-class scores, confusion matrix and mistakes of a checkpoint on labelled images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from vggtune.core.errors import UserError
from vggtune.data.workers import resolve_workers
from vggtune.model import calibration
from vggtune.tasks.checks import check_threshold
from vggtune.tasks.eval_multilabel import evaluate_multilabel
from vggtune.tasks.runs import rel, report_files, score_cell, write_csv, write_json
from vggtune.use.evaluation import (
    EvalResult,
    LabelledImages,
    check_subset,
    compute_metrics,
    describe_data,
    describe_unknown,
    images_from_csv,
    images_from_folder,
    images_from_run,
    tta_gain,
)
from vggtune.use.inference import LoadedModel, Predictions, load_model, predict_probabilities
from vggtune.use.stream_eval import predict_stream

log = logging.getLogger(__name__)

FILES = (
    "metrics.json",
    "per_class.csv",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "misclassified.csv",
    "reliability.png",
)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` on the images ``cfg.data`` names; write the files in :data:`FILES` to the run folder.

    Returns the ``metrics.json`` content.
    """
    run_dir = Path(cfg.paths.run_dir)
    batch_size = int(cfg.data.batch_size)  # every key was checked against vggtune.schema before the task
    workers = resolve_workers(cfg.data.num_workers)
    tta, calibrate = str(cfg.tta), bool(cfg.calibrate)
    labels = cfg.data.get("labels")
    if cfg.data.root is None or labels or cfg.data.get("stream"):
        check_subset(cfg.data.subset)  # before the model loads: a typo should not cost that wait
    threshold = check_threshold(cfg.get("threshold", "auto"))
    model = load_model(cfg.ckpt, cfg.device)
    names, delim = model.class_names, model.label_delim
    if threshold is not None and not model.multilabel:
        log.warning(
            "threshold=%g ignored: it is for several labels per image, and this model gives one class per image",
            threshold,
        )
    stream = cfg.data.get("stream")
    if stream:
        storage = (
            cast(dict, OmegaConf.to_container(cfg.data.storage_options)) if cfg.data.get("storage_options") else None
        )
        data, pred = predict_stream(model, str(stream), cfg.data.subset, storage, batch_size, workers, tta, calibrate)
    elif labels:
        columns = {k: cfg.data.get(k) for k in ("path_column", "label_column", "split_column")}
        data = images_from_csv(
            labels, cfg.data.root, names, cfg.data.subset, columns, cfg.data.get("label_delim") or delim
        )
    elif cfg.data.root is None:
        data = images_from_run(model.path, names, cfg.data.subset, delim)
    else:
        data = images_from_folder(cfg.data.root, names, model.multilabel)
    if data.unknown:
        log.warning(describe_unknown(data.unknown, names))
    log.info(
        "Evaluating %s on %d image files: %s (unreadable ones are left out and listed)",
        rel(model.path),
        len(data.items),
        data.source,
    )

    paths = [p for p, _ in data.items]
    log.info(
        model.describe_calibration(threshold)
        if calibrate or model.multilabel
        else "calibrate=false: probabilities not calibrated"
    )
    if not stream:
        pred = predict_probabilities(model, paths, batch_size, workers, desc="Evaluating", tta=tta, calibrate=calibrate)
    skipped = {str(paths[i]): reason for i, reason in sorted(pred.failures.items())}
    if skipped:
        log.warning("Left out %d image(s) that could not be read (listed in metrics.json):", len(skipped))
        for path, reason in list(skipped.items())[:10]:
            log.warning("  %s: %s", path, reason)
    if not pred.indices:
        first = next(iter(skipped.items()))
        raise UserError(f"none of the {len(paths)} images in {data.source} could be read ({first[0]}: {first[1]})")
    if model.multilabel:
        return evaluate_multilabel(
            run_dir,
            model,
            data,
            pred,
            paths,
            skipped,
            model.thresholds(threshold or "auto"),
            tta,
            fixed=threshold is not None,
        )
    targets = torch.tensor([data.items[i][1] for i in pred.indices])
    result = compute_metrics(pred.probs, targets, names)

    summary = {
        "checkpoint": str(model.path.resolve()),
        "data": describe_data(data, len(pred.indices), skipped),
        "metrics": result.metrics,
        "per_class": result.per_class,
        "class_names": names,
        "calibration": _calibration(model, pred, targets, calibrate, data, cfg.data.subset),
        "tta": _tta_gain(pred, targets, names, tta, result),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", summary)
    _write_tables(run_dir, result, names)
    mistakes = _write_misclassified(
        run_dir / "misclassified.csv", [paths[i] for i in pred.indices], pred.probs, targets, names
    )
    _plot_confusion(run_dir / "confusion_matrix.png", result.confusion, names)
    _plot_reliability(
        run_dir / "reliability.png", pred, targets, model.temperature if model.module.calibration is not None else None
    )
    log.info(_summary_table(summary))
    report_files(
        run_dir,
        {
            "metrics.json": "accuracy, macro F1, per-class scores, which images (and which were left out)",
            "per_class.csv": "precision, recall, F1, images and predictions per class",
            "confusion_matrix.png": "true class down, predicted class across (counts also in confusion_matrix.csv)",
            "misclassified.csv": f"the {mistakes} misclassified images: path, true, predicted, confidence",
            "reliability.png": "confidence against accuracy per bin, before and after the temperature (ECE)",
        },
    )
    return summary


def _calibration(
    model: LoadedModel, pred: Predictions, targets: torch.Tensor, applied: bool, data: LabelledImages, subset: str
) -> dict:
    """ECE and NLL of these images without and with the checkpoint's temperature."""
    raw = pred.uncalibrated().probs
    out: dict[str, object] = {
        "applied": applied and model.module.calibration is not None,
        "ece_bins": calibration.ECE_BINS,
        "ece": calibration.calibration_error(raw, targets),
        "nll": calibration.nll(raw, targets),
    }
    fitted = model.module.calibration
    if fitted is None:
        return {**out, "temperature": None}
    scaled = pred.with_temperature(model.temperature).probs
    out.update(
        temperature=model.temperature,
        fitted_on=f"{fitted['images']} validation images, epoch {fitted['epoch']}",
        ece_calibrated=calibration.calibration_error(scaled, targets),
        nll_calibrated=calibration.nll(scaled, targets),
    )
    if data.source.startswith("the val split of"):
        log.warning(
            "The temperature was fitted on these validation images, so their calibrated ECE is "
            "optimistic: data.subset=test (or other images) measures it fairly"
        )
    return out


def _tta_gain(pred: Predictions, targets: torch.Tensor, names: list[str], tta: str, result: EvalResult) -> dict:
    """What the test-time augmentation changed: the metrics of the plain view alone, and the gain."""
    if tta == "none":
        return {"mode": "none"}
    plain = compute_metrics(pred.plain_probs, targets, names).metrics
    return tta_gain(tta, int(pred.logits.shape[1]), result.metrics, plain)


def _write_tables(run_dir: Path, result: EvalResult, names: list[str]) -> None:
    cols = ["class", "precision", "recall", "f1", "images", "predicted"]
    write_csv(run_dir / "per_class.csv", cols, ([score_cell(row[c]) for c in cols] for row in result.per_class))
    write_csv(
        run_dir / "confusion_matrix.csv",
        ["true \\ predicted", *names],
        ([name, *counts] for name, counts in zip(names, result.confusion.tolist())),
    )


def _write_misclassified(
    path: Path, paths: list[Path], probs: torch.Tensor, targets: torch.Tensor, names: list[str]
) -> int:
    """The wrongly predicted images, most confident first (those are the likeliest label errors)."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != targets).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(confidence[i]))
    write_csv(
        path,
        ["path", "true", "predicted", "confidence"],
        ([str(paths[i]), names[targets[i]], names[predicted[i]], f"{float(confidence[i]):.4f}"] for i in wrong),
    )
    return len(wrong)


def _plot_confusion(path: Path, matrix: torch.Tensor, names: list[str]) -> None:
    """The confusion matrix with class names on both axes (torchmetrics draws it with matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and none is opened
    import matplotlib.pyplot as plt
    from torchmetrics.classification import MulticlassConfusionMatrix

    side = min(30.0, 3.0 + 0.45 * len(names))
    fig, ax = plt.subplots(figsize=(side, side))
    MulticlassConfusionMatrix(len(names)).plot(val=matrix, ax=ax, labels=names, add_text=len(names) <= 30)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({int(matrix.sum())} images)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    plt.setp(ax.get_yticklabels(), rotation=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(path: Path, pred: Predictions, targets: torch.Tensor, temperature: float | None) -> None:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), before and after T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [("softmax(logits)", pred.uncalibrated().probs, "tab:red")]
    if temperature is not None:
        scaled = pred.with_temperature(temperature).probs
        curves.append((f"softmax(logits / {temperature:.3f})", scaled, "tab:blue"))
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    for label, probs, colour in curves:
        rows = [r for r in calibration.reliability_bins(probs, targets) if r["images"]]
        ece = calibration.calibration_error(probs, targets)
        ax.plot(
            [r["confidence"] for r in rows],
            [r["accuracy"] for r in rows],
            "o-",
            color=colour,
            label=f"{label}: ECE {ece:.3f}",
        )
        hist.hist(probs.max(dim=1).values.numpy(), bins=calibration.ECE_BINS, range=(0, 1), color=colour, alpha=0.5)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"reliability ({len(targets)} images, {calibration.ECE_BINS} bins)")
    hist.set_xlabel("confidence (top probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary_table(summary: dict) -> str:
    m, data, cal = summary["metrics"], summary["data"], summary["calibration"]
    top5 = f"   top-5 accuracy {m['acc_top5']:.4f}" if "acc_top5" in m else ""
    lines = [f"{data['images']} images: accuracy {m['acc']:.4f}{top5}   macro F1 {m['f1']:.4f}"]
    tta = summary["tta"]
    of = f" of the {tta['mode']}-averaged probabilities" if tta["mode"] != "none" else ""
    if cal["temperature"] is None:
        lines.append(f"  calibration error (ECE{of}) {cal['ece']:.4f}; the checkpoint has no temperature")
    else:
        lines.append(
            f"  calibration error (ECE{of}) {cal['ece']:.4f} -> {cal['ece_calibrated']:.4f} with the "
            f"temperature {cal['temperature']:.3f}" + ("" if cal["applied"] else " (calibrate=false: not applied)")
        )
    if tta["mode"] != "none":
        lines.append(
            f"  tta={tta['mode']} ({tta['views']} views): accuracy {tta['acc_without']:.4f} -> {m['acc']:.4f} "
            f"({tta['acc_gain']:+.4f}), macro F1 {tta['f1_without']:.4f} -> {m['f1']:.4f} ({tta['f1_gain']:+.4f})"
        )
    lines.append("")
    width = max(len("class"), *(len(r["class"]) for r in summary["per_class"]))
    lines.append(f"  {'class'.ljust(width)}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'images':>7}")
    for r in summary["per_class"]:
        scores = "".join(f"  {'-' if r[k] is None else format(r[k], '.4f'):>9}" for k in ("precision", "recall", "f1"))
        lines.append(f"  {r['class'].ljust(width)}{scores}  {r['images']:>7}")
    if data["unknown_classes"]:
        lines.append(f"  not evaluated (unknown to the model): {', '.join(data['unknown_classes'])}")
    if data["unreadable"]:
        lines.append(f"  not evaluated (unreadable): {len(data['unreadable'])} files, listed in metrics.json")
    return "\n".join(lines)


def run(cfg: DictConfig) -> float:
    """The ``vggtune eval`` task: evaluate, and return the top-1 accuracy."""
    return evaluate(cfg)["metrics"]["acc"]
