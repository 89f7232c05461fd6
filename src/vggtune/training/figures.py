"""The figures vggtune draws for TensorBoard and for ``eval``: confusion matrix, per-label scores, prediction
grids. Each returns a ``matplotlib.figure.Figure`` drawn without pyplot (no display, no global state)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Beyond this many classes the per-cell numbers would overlap; the colours alone still tell.
_ANNOTATE_UP_TO = 20
WRONG, RIGHT = "#c62828", "#2e7d32"


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """``fig`` rendered as an (H, W, 3) uint8 array: what ``add_image(..., dataformats="HWC")`` takes."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix divided by its total (the true class's images); empty rows stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_matrix_figure(counts: np.ndarray, class_names: list[str], title: str) -> Figure:
    """``counts[i, j]`` images of true class i predicted as j, drawn normalised per true class.

    Rows are labelled with the class name and its number of images, so a 1.0 from a single image
    is not mistaken for a reliable class.
    """
    rates = row_normalised(counts)
    n = len(class_names)
    side = min(3.5 + 0.45 * n, 24)
    fig = Figure(figsize=(side + 1.8, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    totals = np.asarray(counts).sum(axis=1)
    small = 9 if n <= 10 else 7
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=small)
    ax.set_yticks(range(n), [f"{name} ({int(t)})" for name, t in zip(class_names, totals)], fontsize=small)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    if n <= _ANNOTATE_UP_TO:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{rates[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=small,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_title(title)
    return fig


def _image_grid(n: int, title: str, cell_inches: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A titled figure with a square grid of ``n`` axes (their frames off), flattened in reading order."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(cell_inches[0] * cols, cell_inches[1] * rows + 0.4), layout="constrained")
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    return fig, axes


def prediction_grid_figure(
    images: np.ndarray, true: list[int], pred: list[int], conf: list[float], class_names: list[str], title: str
) -> Figure:
    """Images (N, H, W, 3 floats in 0..1) in a square grid, each titled with its true and predicted class.

    The predicted class carries the model's confidence (softmax probability); mistakes are titled in
    red, hits in green.
    """
    fig, axes = _image_grid(len(images), title, (2.1, 2.35))
    for ax, image, t, p, c in zip(axes, images, true, pred, conf):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(
            f"true: {class_names[t]}\npred: {class_names[p]} ({c:.2f})", fontsize=8, color=RIGHT if t == p else WRONG
        )
    return fig


def per_label_figure(stats: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Precision, recall and F1 of each label (bars), from (labels, 5) counts: tp, fp, tn, fn, support."""
    tp, fp, _, fn, _ = np.asarray(stats, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    n = len(class_names)
    fig = Figure(figsize=(min(4 + 0.6 * n, 24), 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    for offset, values, name, colour in (
        (-0.27, precision, "precision", "#1565c0"),
        (0.0, recall, "recall", "#ef6c00"),
        (0.27, f1, "F1", "#2e7d32"),
    ):
        ax.bar(x + offset, values, width=0.27, label=name, color=colour)
    ax.set_xticks(
        x,
        [f"{name} ({int(p)})" for name, p in zip(class_names, tp + fn)],
        rotation=45,
        ha="right",
        rotation_mode="anchor",
        fontsize=9 if n <= 10 else 7,
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_xlabel("label (images that have it)")
    ax.legend(loc="upper left", ncols=3, fontsize=8)
    ax.set_title(title)
    return fig


def multilabel_grid_figure(
    images: np.ndarray,
    true: list[list[float]],
    probs: list[list[float]],
    threshold: float,
    class_names: list[str],
    title: str,
) -> Figure:
    """Images titled with their true labels and the labels over ``threshold`` (with probabilities)."""
    fig, axes = _image_grid(len(images), title, (2.3, 2.6))
    for ax, image, t, p in zip(axes, images, true, probs):
        ax.imshow(image, interpolation="nearest")
        truth = {class_names[i] for i, v in enumerate(t) if v > 0.5}
        over = [(class_names[i], v) for i, v in sorted(enumerate(p), key=lambda iv: -iv[1]) if v >= threshold]
        shown = ", ".join(f"{name} {v:.2f}" for name, v in over[:3]) + (" ..." if len(over) > 3 else "")
        ax.set_title(
            f"true: {', '.join(sorted(truth)) or '-'}\npred: {shown or '-'}",
            fontsize=7,
            color=RIGHT if truth == {name for name, _ in over} else WRONG,
        )
    return fig
