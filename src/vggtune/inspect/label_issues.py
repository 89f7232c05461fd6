"""Which given labels are likely wrong: cleanlab's confident learning over out-of-fold probabilities.

cleanlab is an optional dependency (``pip install 'vggtune[audit]'``); the functions here import it when
called, so that the rest of vggtune works without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vggtune.core.errors import UserError


def import_cleanlab():
    """The cleanlab package, or a UserError saying how to install it."""
    try:
        import cleanlab
        import cleanlab.filter
        import cleanlab.multilabel_classification
        import cleanlab.outlier
        import cleanlab.rank
    except ImportError:
        raise UserError("vggtune audit needs cleanlab: pip install 'vggtune[audit]'") from None
    return cleanlab


@dataclass
class LabelIssues:
    """The images flagged as mislabelled, most likely wrong first, with every image's label quality."""

    ranked: np.ndarray  # indices of the flagged images, lowest label quality first
    quality: np.ndarray  # (N,) cleanlab's label quality score, 0 to 1: low = the given label is likely wrong
    suggested: list  # per image: the class index (or, multi-label, the tuple of labels) the probabilities favour


def find_label_issues(
    labels, pred_probs: np.ndarray, multilabel: bool = False, filter_by: str = "lowest_self_confidence"
) -> LabelIssues:
    """Confident learning over out-of-fold probabilities, ranked by cleanlab's label quality score
    (``self_confidence``: the out-of-fold probability of the given label).

    ``filter_by`` is cleanlab's, or ``lowest_self_confidence`` (the default): as many images as cleanlab's
    default filter (``prune_by_noise_rate``) flags, but the ones whose given label has the lowest
    out-of-fold probability. ``prune_by_noise_rate`` picks within each pair of classes by margin, and on
    bench/audit.py's flipped labels that choice was worse by 0.03-0.08 F1 in each of its 4 settings (12 runs);
    cleanlab's ``low_self_confidence`` ranks the same way but stops at its ``num_label_issues``, which found
    fewer of the flips. Multi-label: cleanlab's multi-label functions (which have no ``filter_by`` choice
    but ``prune_by_noise_rate`` there), ``labels`` a list of tuples of class indices; a label is suggested at p >= 0.5."""
    cleanlab = import_cleanlab()
    if multilabel:
        given = [list(label) for label in labels]
        ranked = cleanlab.multilabel_classification.filter.find_label_issues(
            given, pred_probs, return_indices_ranked_by="self_confidence"
        )
        quality = cleanlab.multilabel_classification.get_label_quality_scores(given, pred_probs)
        suggested = [tuple(int(i) for i in np.flatnonzero(row >= 0.5)) for row in pred_probs]
        return LabelIssues(np.asarray(ranked, dtype=int), quality, suggested)
    labels = np.asarray(labels)
    missing = sorted(set(range(pred_probs.shape[1])) - set(labels.tolist()))
    if missing:  # cleanlab's confident joint needs every class among the given labels
        raise UserError(f"class index {missing[0]} has no image left to audit: every class needs images")
    quality = cleanlab.rank.get_label_quality_scores(labels, pred_probs, method="self_confidence")
    if filter_by == "lowest_self_confidence":
        count = int(cleanlab.filter.find_label_issues(labels, pred_probs).sum())
        ranked = np.argsort(quality, kind="stable")[:count]
    else:
        ranked = cleanlab.filter.find_label_issues(
            labels, pred_probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"
        )
    return LabelIssues(np.asarray(ranked, dtype=int), quality, [int(i) for i in pred_probs.argmax(1)])


def by_loss(labels: np.ndarray, pred_probs: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` images with the highest cross-entropy loss under ``pred_probs``, highest first."""
    loss = -np.log(np.clip(pred_probs[np.arange(len(labels)), labels], 1e-12, None))
    return np.argsort(-loss, kind="stable")[:count]


def outlier_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's out-of-distribution score of each vector (from its distance to its nearest neighbours, 0 to 1:
    low = far from every other image) and whether it is an outlier by Datalab's rule for features: an average
    neighbour distance above Q3 + (1/0.37 - 1) x IQR of them all."""
    cleanlab = import_cleanlab()
    k = min(10, len(features) - 1)
    if k < 1:
        return np.ones(len(features)), np.zeros(len(features), dtype=bool)
    scores = cleanlab.outlier.OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)
    # The score is exp(-distance / scale): -log(score) is the distance up to a scale, which the rule ignores.
    distance = -np.log(np.clip(scores, 1e-300, None))
    q1, q3 = np.percentile(distance, [25, 75])
    return scores, distance > q3 + (1 / 0.37037 - 1) * (q3 - q1)
