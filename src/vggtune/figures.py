"""The pictures TensorBoard shows during training: the validation confusion matrix and a prediction grid.

Drawn with ``matplotlib.figure.Figure`` and the Agg canvas directly (no pyplot), so nothing depends on
a display or on pyplot's global state, and rendered to arrays for ``SummaryWriter.add_image``.
"""

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
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=small,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_title(title)
    return fig


def prediction_grid_figure(images: np.ndarray, true: list[int], pred: list[int], conf: list[float],
                           class_names: list[str], title: str) -> Figure:
    """Images (N, H, W, 3 floats in 0..1) in a square grid, each titled with its true and predicted class.

    The predicted class carries the model's confidence (softmax probability); mistakes are titled in
    red, hits in green.
    """
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(2.1 * cols, 2.35 * rows + 0.4), layout="constrained")
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, t, p, c in zip(axes, images, true, pred, conf):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true: {class_names[t]}\npred: {class_names[p]} ({c:.2f})", fontsize=8,
                     color=RIGHT if t == p else WRONG)
    return fig
