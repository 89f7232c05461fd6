"""``vggtune predict``: the top-k classes of every file under an input path, one CSV row each."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig

from vggtune.core.errors import UserError
from vggtune.data.workers import resolve_workers
from vggtune.tasks.checks import check_threshold
from vggtune.tasks.runs import keep_copy, output_path, rel, report_files, write_csv
from vggtune.use.inference import LoadedModel, Predictions, find_images, load_model, predict_probabilities

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> Path:
    """Classify ``cfg.input`` with ``cfg.ckpt``; write the CSV to ``cfg.output`` and the run folder.

    Files that are not readable images get a row with the reason instead of classes, so the
    CSV accounts for every file found. Returns the path of the CSV.
    """
    run_dir = Path(cfg.paths.run_dir)
    top_k, batch_size = int(cfg.top_k), int(cfg.batch_size)  # checked against vggtune.schema before the task
    workers = resolve_workers(cfg.num_workers, "num_workers")
    tta, calibrate = str(cfg.tta), bool(cfg.calibrate)
    threshold = check_threshold(cfg.get("threshold", "auto"))  # before the model loads
    out = output_path(cfg.output, run_dir, "predictions.csv")
    paths = find_images(cfg.input)
    model = load_model(cfg.ckpt, cfg.device)
    top_k = fit_to_model(model, top_k, threshold, top_k_given=cfg.top_k != 3)
    log.info("Predicting %d file(s) under %s with %s", len(paths), cfg.input, rel(model.path))

    log.info(
        model.describe_calibration(threshold)
        if calibrate or model.multilabel
        else "calibrate=false: probabilities not calibrated"
    )
    if tta != "none":
        log.info("tta=%s: each image's probabilities are the mean over its views", tta)
    pred = predict_probabilities(model, paths, batch_size, workers, tta=tta, calibrate=calibrate)
    check_readable(paths, pred, cfg.input)
    header, rows = prediction_table([str(p.absolute()) for p in paths], pred, model, top_k, threshold)
    write_csv(out, header, ([_cell(v) for v in row] for row in rows))
    if model.multilabel:
        what = "one row per file: path, the labels over their thresholds, every label's probability, or the error"
        report = _multilabel_report(paths, pred, model.class_names, model.thresholds(threshold or "auto"), out)
    else:
        what = f"one row per file: path, top-{top_k} classes and probabilities, or the error"
        report = _report(paths, pred, model.class_names, top_k, out)
    copied = keep_copy(out, run_dir, "predictions.csv")
    log.info(report)
    report_files(run_dir, {"predictions.csv": f"a copy of {rel(out)}" if copied else what})
    return out


def fit_to_model(model: LoadedModel, top_k: int, threshold: float | None, top_k_given: bool = True) -> int:
    """``top_k`` as this model can use it, with a warning for a setting the model makes moot (a threshold for a
    one-class model, top_k for a multi-label one, more classes than it knows)."""
    names = model.class_names
    if threshold is not None and not model.multilabel:
        log.warning(
            "threshold=%g ignored: it is for several labels per image, and this model gives one class "
            "per image (its top_k classes are listed)",
            threshold,
        )
    if model.multilabel and top_k_given:
        log.warning(
            "top_k=%s ignored: a multi-label model lists every label over its threshold and every label's probability",
            top_k,
        )
    if top_k > len(names) and not model.multilabel:
        log.warning("top_k=%d but the model knows %d classes: listing all %d", top_k, len(names), len(names))
        top_k = len(names)
    return top_k


def check_readable(paths: list, pred: Predictions, input_name) -> None:
    """A UserError when none of ``paths`` could be classified (``input_name``: what the user passed)."""
    if pred.indices:
        return
    reason = pred.failures[0]
    raise UserError(
        f"input {paths[0]} cannot be classified: {reason}"
        if len(paths) == 1
        else f"none of the {len(paths)} files under {input_name} is a readable image "
        f"(the first, {paths[0]}: {reason}): pass an image file or a folder of images"
    )


def prediction_table(
    inputs: list, pred: Predictions, model: LoadedModel, top_k: int, threshold: float | None = None
) -> tuple[list[str], list[list]]:
    """The columns and rows of ``vggtune predict``'s CSV, one row per input in order.

    ``inputs`` fills the ``path`` column. Then the top-k classes and their probabilities (several labels
    per image: the labels over their thresholds, most probable first, and every label's probability), and
    ``error``: "" for a predicted input, else why it was not. Probabilities are floats; empty cells None.
    """
    names = model.class_names
    if model.multilabel:
        thresholds = model.thresholds(threshold or "auto")
        header = ["path", "labels", *(f"prob_{n}" for n in names), "error"]
        delim = cast(str, model.label_delim)  # a multi-label model has one
        return header, list(_multilabel_rows(inputs, pred, names, thresholds, delim))
    header = ["path", *(f"{c}_{i}" for i in range(1, top_k + 1) for c in ("class", "probability")), "error"]
    return header, list(_rows(inputs, pred, names, top_k))


def _cell(value) -> str:
    """A CSV cell: probabilities with 6 decimals, nothing for None."""
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _multilabel_rows(inputs: list, pred: Predictions, names: list[str], thresholds: list[float], delim: str):
    """One row per input: the labels at or over their thresholds (most probable first) and every probability."""
    row_of = dict(zip(pred.indices, range(len(pred.indices))))
    probs = pred.probs
    for i, name in enumerate(inputs):
        if i in row_of:
            p = probs[row_of[i]].tolist()
            over = sorted((j for j in range(len(names)) if p[j] >= thresholds[j]), key=lambda j: -p[j])
            yield [name, delim.join(names[j] for j in over), *p, ""]
        else:
            yield [name, None, *([None] * len(names)), pred.failures[i]]


def _multilabel_report(
    paths: list[Path], pred: Predictions, names: list[str], thresholds: list[float], out: Path
) -> str:
    over = pred.probs >= torch.tensor(thresholds)
    if len(paths) == 1 and pred.indices:
        p = pred.probs[0].tolist()
        shown = ", ".join(
            f"{names[j]} {p[j]:.4f}" for j in sorted(over[0].nonzero().flatten().tolist(), key=lambda j: -p[j])
        )
        lines = [f"{paths[0]}: {shown or 'no label over its threshold'}"]
    else:
        counts = over.sum(dim=0).tolist()
        lines = [
            f"Predicted {len(pred.indices)} image(s); images per label: "
            + ", ".join(f"{n} {c}" for n, c in zip(names, counts))
        ]
    if pred.failures:
        lines.append(f"{len(pred.failures)} file(s) are not readable images; their rows give the reason")
    lines.append(f"Predictions: {rel(out)}")
    return "\n".join(lines)


def _rows(inputs: list, pred: Predictions, names: list[str], top_k: int):
    """One row per input, in order: its top-k classes, or its error."""
    row_of = dict(zip(pred.indices, range(len(pred.indices))))
    probs, classes = pred.probs.topk(top_k, dim=1)
    for i, name in enumerate(inputs):
        if i in row_of:
            r = row_of[i]
            cells = [x for c, p in zip(classes[r].tolist(), probs[r].tolist()) for x in (names[c], p)]
            yield [name, *cells, ""]
        else:
            yield [name, *([None] * (2 * top_k)), pred.failures[i]]


def _report(paths: list[Path], pred: Predictions, names: list[str], top_k: int, out: Path) -> str:
    lines = []
    if len(paths) == 1:  # one image: the answer belongs on the terminal
        probs, classes = pred.probs[0].topk(top_k)
        lines.append(
            f"{paths[0]}: " + ", ".join(f"{names[c]} {p:.4f}" for c, p in zip(classes.tolist(), probs.tolist()))
        )
    else:
        counts = Counter(names[c] for c in pred.probs.argmax(dim=1).tolist())
        lines.append(
            f"Predicted {len(pred.indices)} image(s): " + ", ".join(f"{k} {n}" for k, n in counts.most_common())
        )
    if pred.failures:
        lines.append(f"{len(pred.failures)} file(s) are not readable images; their rows give the reason:")
        lines += [f"  {paths[i]}: {reason}" for i, reason in sorted(pred.failures.items())[:10]]
        if len(pred.failures) > 10:
            lines.append(f"  ... and {len(pred.failures) - 10} more")
    lines.append(f"Predictions: {rel(out)}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> str:
    """The ``vggtune predict`` task: returns the path of the CSV it wrote."""
    return str(predict(cfg))
