"""Out-of-fold predicted probabilities: K heads on cached backbone vectors, each scoring the fold it never saw.

Confident learning (cleanlab) needs probabilities from a model that did not train on the label it
judges: a model scores its own training labels as right, wrong ones included, once it has
memorised them (cleanlab issues #52, #344). Training K heads on frozen vectors costs a few seconds,
where K fine-tunes of the whole network would cost K runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from vggtune.core.errors import UserError


@dataclass(frozen=True)
class HeadRecipe:
    """How each fold's head trains: a linear layer on standardised vectors, Adam, ``epochs`` passes over the fold,
    and an L2 penalty ``l2 / 2 x |W|^2`` added to the mean loss (an L2-regularised logistic regression: a head
    free to fit every training label fits the wrong ones too, and then vouches for them less often out of fold;
    bench/audit.py: F1 0.69 without it, 0.81 with it, on its 20%-noise task over 3 seeds)."""

    epochs: int = 30
    lr: float = 1e-3
    l2: float = 0.1
    batch_size: int = 64


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
) -> nn.Module:
    """A linear head on standardised vectors ``x``: softmax cross-entropy, or (multi-label) a sigmoid per label."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    yt = yt.float() if multilabel else yt.long()
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(x.shape[1], classes)
    head = nn.Sequential(_Standardise(mean, std), linear)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    opt = torch.optim.Adam(linear.parameters(), lr=recipe.lr)
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(xt), generator=generator).split(recipe.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(head(xt[batch]), yt[batch]) + 0.5 * recipe.l2 * linear.weight.square().sum()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def probabilities(head: nn.Module, x: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """The head's probabilities for ``x``: softmax rows, or a sigmoid per label."""
    logits = head(torch.from_numpy(x).float())
    return (logits.sigmoid() if multilabel else logits.softmax(1)).numpy()


def out_of_fold(
    x: np.ndarray, y: np.ndarray, classes: int, folds: int, recipe: HeadRecipe, seed: int, multilabel: bool = False
) -> np.ndarray:
    """``(N, classes)`` probabilities, each row from the head of the one fold that held the image out."""
    probs = np.zeros((len(x), classes), dtype=np.float32)
    for k, held in enumerate(fold_indices(y, folds, seed, multilabel)):
        train = np.setdiff1d(np.arange(len(x)), held)
        head = train_head(x[train], y[train], classes, recipe, seed + k, multilabel)
        probs[held] = probabilities(head, x[held], multilabel)
    return probs


def in_sample(
    x: np.ndarray, y: np.ndarray, classes: int, recipe: HeadRecipe, seed: int, multilabel: bool = False
) -> np.ndarray:
    """Probabilities from one head trained on every image, labels included: the in-sample baseline
    (what ranking by training loss, as fastai's ImageClassifierCleaner does, looks at)."""
    return probabilities(train_head(x, y, classes, recipe, seed, multilabel), x, multilabel)


class _Standardise(nn.Module):
    """(x - mean) / std with the training fold's statistics, so one learning rate suits any backbone's scale."""

    mean: torch.Tensor  # buffers (register_buffer): declared for the type checker
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
