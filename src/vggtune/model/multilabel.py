"""Several labels per image: the metrics, and the per-label thresholds chosen on the validation set.

A multi-label head gives one sigmoid probability per label; a label is predicted when its
probability reaches the label's threshold. 0.5 is rarely the best cut for a label that is rare or
hard, so after each validation epoch every label gets the threshold that maximises its F1 on the
validation images (kept in the checkpoint, used by eval, predict and the export's JSON).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelExactMatch, MultilabelF1Score

DEFAULT_THRESHOLD = 0.5


def multilabel_metrics(num_labels: int, prefix: str, threshold: float = DEFAULT_THRESHOLD) -> MetricCollection:
    """Subset accuracy (every label of the image right), macro mAP, and macro F1 at ``threshold``.

    ``compute_groups=False`` for the reason given in :func:`vggtune.model.module.classification_metrics`.
    """
    metrics: dict[str, Metric | MetricCollection] = {
        "acc": MultilabelExactMatch(num_labels, threshold=threshold),
        "map": MultilabelAveragePrecision(num_labels, average="macro"),
        "f1": MultilabelF1Score(num_labels, threshold=threshold, average="macro"),
    }
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


def best_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the probability cut that maximises the label's F1 on these images.

    The cut lies half-way between the lowest probability predicted positive and the next one
    down, so that it is not fitted to one image's exact score. A label with no positive image has
    no F1 to maximise and keeps :data:`DEFAULT_THRESHOLD`. Ties go to the higher cut (fewer false positives).
    """
    probs, targets = probs.detach().double().cpu(), targets.detach().cpu() > 0.5
    out = []
    for label in range(probs.shape[1]):
        p, t = probs[:, label], targets[:, label]
        positives = int(t.sum())
        if positives == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        order = torch.argsort(p, descending=True)
        p_sorted, hits = p[order], t[order].double()
        tp = hits.cumsum(0)
        k = torch.arange(1, len(p) + 1, dtype=torch.float64)  # predicted positives when the top k are
        f1 = 2 * tp / (k + positives)
        # A cut can only fall between two different scores: ties are predicted together.
        distinct = torch.ones(len(p), dtype=torch.bool)
        distinct[:-1] = p_sorted[:-1] > p_sorted[1:]
        f1 = torch.where(distinct, f1, torch.tensor(-1.0, dtype=torch.float64))
        best = int(torch.argmax(f1))  # the first maximum: the smallest k, the highest cut
        below = float(p_sorted[best + 1]) if best + 1 < len(p) else 0.0
        out.append((float(p_sorted[best]) + below) / 2)
    return out


def predicted_labels(probs: torch.Tensor, thresholds: list[float] | torch.Tensor) -> torch.Tensor:
    """(images, labels) booleans: the probability reaches the label's threshold."""
    return probs >= torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device)


def tuned_f1(probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float]) -> float:
    """Macro F1 over the labels with the per-label thresholds (optimistic on the images they were chosen on)."""
    predicted, truth = predicted_labels(probs, thresholds), targets > 0.5
    tp = (predicted & truth).sum(0).double()
    denominator = predicted.sum(0) + truth.sum(0)
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))
    return float(f1.mean())
