"""Looking at a set of embedding vectors: 2-D maps (PCA, t-SNE), a silhouette score, TensorBoard's projector.

scikit-learn does the maths and matplotlib draws; figures are built with ``matplotlib.figure.Figure``
rather than pyplot, so no GUI backend or global figure state is involved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.metrics.pairwise import distance_metrics

from vggtune.core.errors import UserError

log = logging.getLogger(__name__)

_TSNE_INPUT_DIMS = 50  # scikit-learn's advice: reduce to ~50 dimensions with PCA before t-SNE
_TSNE_EXACT_MAX = 500
_SILHOUETTE_SAMPLE = 10_000  # the score needs all pairwise distances: sample beyond this many points


def check_metric(metric: str) -> str:
    """``metric`` if scikit-learn can compute it between vectors, else a UserError listing the choices."""
    choices = sorted(set(distance_metrics()) - {"haversine", "precomputed"})  # 2-D points; a distance matrix
    if metric not in choices:
        raise UserError(f"metric must be one of {', '.join(choices)}, got {metric!r}")
    return metric


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of each row, and the fraction of variance each explains."""
    pca = PCA(n_components=2)
    return pca.fit_transform(x), pca.explained_variance_ratio_


def tsne_2d(
    x: np.ndarray, perplexity: float = 30.0, metric: str = "euclidean", seed: int = 0
) -> tuple[np.ndarray, float]:
    """A t-SNE map of the rows of ``x``, and the perplexity used.

    t-SNE needs a perplexity below the number of points; with few points it is lowered to
    (n - 1) / 3 (but at least 1), the usual rule of thumb, and logged.
    """
    n = len(x)
    used = float(min(perplexity, max(1.0, (n - 1) / 3)))
    if used < perplexity:
        log.info("t-SNE: perplexity lowered from %g to %.2g for %d images", perplexity, used, n)
    if x.shape[1] > _TSNE_INPUT_DIMS and n > _TSNE_INPUT_DIMS:
        x = PCA(n_components=_TSNE_INPUT_DIMS, random_state=seed).fit_transform(x)
    # Exact gradients cost O(n^2) per step: faster than Barnes-Hut's approximation for small sets, and exact.
    method = "exact" if n <= _TSNE_EXACT_MAX else "barnes_hut"
    tsne = TSNE(
        n_components=2,
        perplexity=used,
        metric=metric,
        init="pca",
        learning_rate="auto",
        method=method,
        random_state=seed,
    )
    return tsne.fit_transform(x), used


def silhouette(x: np.ndarray, labels: np.ndarray, metric: str = "euclidean", seed: int = 0) -> float | None:
    """Mean silhouette coefficient of the classes (-1 to 1; higher: classes better separated).

    None where it is undefined: scikit-learn needs 2 <= number of classes <= number of points - 1.
    """
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(x) - 1:
        return None
    sample = _SILHOUETTE_SAMPLE if len(x) > _SILHOUETTE_SAMPLE else None
    return float(silhouette_score(x, labels, metric=metric, sample_size=sample, random_state=seed))


def scatter_png(
    points: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    title: str,
    path: Path,
    axis_labels: tuple[str, str] = ("", ""),
) -> None:
    """Save a 2-D scatter plot of ``points`` coloured by class, with a legend, as a PNG."""
    n_classes = len(class_names)
    cmap = colormaps["tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "turbo"]
    colours = cmap.resampled(n_classes) if n_classes > 20 else cmap
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.subplots()
    size = 30 if len(points) <= 500 else 8
    for c, name in enumerate(class_names):
        mine = labels == c
        if mine.any():
            ax.scatter(
                points[mine, 0],
                points[mine, 1],
                s=size,
                color=colours(c),
                label=f"{name} ({mine.sum()})",
                alpha=0.8,
                edgecolors="none",
            )
    ax.set_title(title)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    fig.legend(loc="outside right upper", title="class", fontsize="small", ncols=1 + n_classes // 30)
    fig.savefig(path, dpi=110)


def write_projector(
    log_dir: Path,
    vectors: np.ndarray,
    metadata: list[list[str]],
    header: list[str],
    thumbnails: torch.Tensor | None,
    tag: str = "fc7",
) -> None:
    """TensorBoard projector files: the vectors, a metadata row per vector and a sprite of thumbnails.

    ``thumbnails`` are uint8 images (N, 3, h, w), or None for no sprite. View them with
    ``tensorboard --logdir <log_dir>``, tab "Projector".
    """
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when writing

    label_img = thumbnails.float() / 255 if thumbnails is not None else None
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_embedding(
            torch.from_numpy(vectors), metadata=metadata, metadata_header=header, label_img=label_img, tag=tag
        )
