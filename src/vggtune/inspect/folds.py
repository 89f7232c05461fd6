"""Out-of-fold predicted probabilities: K heads on cached backbone vectors, each scoring the fold it never saw.

Confident learning (cleanlab) needs probabilities from a model that did not train on the label it
judges: a model scores its own training labels as right, wrong ones included, once it has
memorised them (cleanlab issues #52, #344). Training K heads on frozen vectors costs a second,
where K fine-tunes of the whole network would cost K runs. Each head is scikit-learn's
``LogisticRegression`` on the standardised vectors, cleanlab's own default classifier for
``estimate_cv_predicted_probabilities`` (one per label, ``OneVsRestClassifier``, for several labels
per image); the folds are ours so that they are stratified and seeded as the rest of the audit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vggtune.core.errors import UserError


@dataclass(frozen=True)
class HeadRecipe:
    """How each fold's head fits: an L2-regularised logistic regression on the standardised vectors.

    ``c`` is scikit-learn's ``C``, the inverse of the L2 strength (its default and cleanlab's, 1.0);
    bench/audit.py measured 0.1, 0.3, 1, 3 and 10 (1 best over both data sizes and noise levels).
    ``max_iter`` bounds lbfgs: standardised vectors converge well within it.
    """

    c: float = 1.0
    max_iter: int = 1000


def check_folds(labels: np.ndarray, classes: list[str], folds: int, multilabel: bool) -> None:
    """Every class must have an image in each fold's held-out part (stratified): at least ``folds`` of them."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"audit.folds must be an integer of at least 2, got {folds!r}")
    if len(labels) < folds:
        raise UserError(f"audit.folds={folds} needs at least {folds} images, the data set has {len(labels)}")
    counts = labels.sum(axis=0) if multilabel else np.bincount(labels, minlength=len(classes))
    few = int(np.argmin(counts))
    if not multilabel and counts[few] < folds:
        raise UserError(
            f"class '{classes[few]}' has {int(counts[few])} image(s), fewer than audit.folds={folds}: each "
            f"fold needs one of every class; lower audit.folds (to {max(2, int(counts[few]))} at most) or "
            "add images"
        )


def fold_indices(labels: np.ndarray, folds: int, seed: int, multilabel: bool) -> list[np.ndarray]:
    """The held-out indices of each fold: stratified by class (scikit-learn), seeded; plain K-fold for
    several labels per image, where no single class can stratify."""
    splitter = (
        KFold(folds, shuffle=True, random_state=seed)
        if multilabel
        else StratifiedKFold(folds, shuffle=True, random_state=seed)
    )
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels if not multilabel else None)]


def train_head(
    x: np.ndarray, y: np.ndarray, classes: int, recipe: HeadRecipe, seed: int, multilabel: bool = False
) -> Pipeline:
    """A logistic regression on standardised vectors ``x``: softmax over the classes, or (multi-label) one per label."""
    logistic = LogisticRegression(C=recipe.c, max_iter=recipe.max_iter, random_state=seed)
    head = make_pipeline(StandardScaler(), OneVsRestClassifier(logistic) if multilabel else logistic)
    # One BLAS thread: OpenBLAS's pthreads spin while they wait, and on busy cores (data loader workers,
    # other processes) these small fits ran 26x slower with its default threads (OpenBLAS issue #3187,
    # scikit-learn #17334). Capped lbfgs runs are kept: their probabilities are what confident learning reads.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        head.fit(x, y)
    return head


def probabilities(head: Pipeline, x: np.ndarray, classes: int, multilabel: bool = False) -> np.ndarray:
    """The head's probabilities for ``x``, ``(N, classes)``: softmax rows, or the probability of each label."""
    with threadpool_limits(limits=1, user_api="blas"):
        probs = head.predict_proba(x)
    if multilabel:
        return probs.astype(np.float32)
    out = np.zeros((len(x), classes), dtype=np.float32)  # a fold's head knows the classes it saw
    out[:, head.classes_] = probs
    return out


def out_of_fold(
    x: np.ndarray, y: np.ndarray, classes: int, folds: int, recipe: HeadRecipe, seed: int, multilabel: bool = False
) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from the head of the one fold that held the image out."""
    probs = np.zeros((len(x), classes), dtype=np.float32)
    for k, held in enumerate(fold_indices(y, folds, seed, multilabel)):
        train = np.setdiff1d(np.arange(len(x)), held)
        head = train_head(x[train], y[train], classes, recipe, seed + k, multilabel)
        probs[held] = probabilities(head, x[held], classes, multilabel)
    return probs


def in_sample(
    x: np.ndarray, y: np.ndarray, classes: int, recipe: HeadRecipe, seed: int, multilabel: bool = False
) -> np.ndarray:
    """Probabilities from one head trained on every image, labels included: the in-sample baseline
    (what ranking by training loss, as fastai's ImageClassifierCleaner does, looks at)."""
    return probabilities(train_head(x, y, classes, recipe, seed, multilabel), x, classes, multilabel)
