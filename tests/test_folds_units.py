"""The audit's out-of-fold heads on small vectors, checked against scikit-learn fitted here independently:
the fold check's messages, the folds themselves, each head's probabilities, and how the folds combine."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from vggtune.core.errors import UserError
from vggtune.inspect.folds import (
    HeadRecipe,
    check_folds,
    fold_indices,
    in_sample,
    out_of_fold,
    probabilities,
    train_head,
)

CLASSES = ["cat", "dog", "fox"]


def _data(per_class: int = 8, dims: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), per_class)
    return 2.0 * rng.normal(size=(3, dims))[y] + rng.normal(size=(len(y), dims)), y


def _standardised(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """StandardScaler's transform, written out: the training vectors' mean and (population) deviation."""
    return (x - train.mean(0)) / train.std(0)


def _sklearn_probs(x_train, y_train, x, c=1.0, seed=0) -> np.ndarray:
    with threadpool_limits(limits=1, user_api="blas"):  # small fits: BLAS threads only spin (see folds.train_head)
        lr = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(_standardised(x_train, x_train), y_train)
        return lr.predict_proba(_standardised(x_train, x))


@pytest.mark.parametrize(
    "labels, folds, message",
    [
        ([0, 1, 2] * 3, 1, "audit.folds must be an integer of at least 2, got 1"),
        ([0, 1, 2] * 3, True, "audit.folds must be an integer of at least 2, got True"),
        ([0, 1, 2] * 3, 2.5, "audit.folds must be an integer of at least 2, got 2.5"),
        ([0, 1, 2], 4, "audit.folds=4 needs at least 4 images, the data set has 3"),
        (
            [0] * 6 + [1] * 6 + [2] * 2,
            5,
            "class 'fox' has 2 image(s), fewer than audit.folds=5: each fold needs one of every class; "
            "lower audit.folds (to 2 at most) or add images",
        ),
    ],
)
def test_folds_that_cannot_be_stratified_are_one_line(labels, folds, message):
    with pytest.raises(UserError) as e:
        check_folds(np.array(labels), CLASSES, folds, multilabel=False)
    assert str(e.value) == message


def test_enough_images_of_each_class_pass_and_several_labels_are_not_stratified():
    assert check_folds(np.array([0, 1, 2] * 3), CLASSES, 3, multilabel=False) is None
    multi = np.zeros((6, 3), dtype=int)
    multi[:, 0] = 1
    multi[0, 2] = 1  # label 2 on one image: fine without stratification
    assert check_folds(multi, CLASSES, 3, multilabel=True) is None


def test_the_folds_split_every_image_once_each_with_its_share_of_every_class():
    y = np.array([0] * 10 + [1] * 7 + [2] * 5)
    folds = fold_indices(y, 5, seed=1, multilabel=False)
    assert len(folds) == 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))  # a partition
    for c, n in enumerate(np.bincount(y)):
        per_fold = [int((y[held] == c).sum()) for held in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n  # stratified
    again = fold_indices(y, 5, seed=1, multilabel=False)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # seeded
    other = fold_indices(y, 5, seed=2, multilabel=False)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other))  # shuffled by the seed


def test_several_labels_per_image_get_plain_folds_of_equal_size():
    multi = np.eye(3, dtype=int)[np.arange(11) % 3]
    folds = fold_indices(multi, 4, seed=0, multilabel=True)
    assert sorted(np.concatenate(folds).tolist()) == list(range(11))
    assert sorted(len(f) for f in folds) == [2, 3, 3, 3]


def test_a_head_is_a_logistic_regression_on_standardised_vectors():
    x, y = _data()
    recipe = HeadRecipe(c=0.3)
    head = train_head(x, y, 3, recipe, seed=0)
    probs = probabilities(head, x[:5], 3)
    assert probs.dtype == np.float32 and probs.shape == (5, 3)
    np.testing.assert_allclose(probs, _sklearn_probs(x, y, x[:5], c=0.3), atol=1e-5)
    np.testing.assert_allclose(in_sample(x, y, 3, recipe, seed=0), _sklearn_probs(x, y, x, c=0.3), atol=1e-5)


def test_a_class_a_head_never_saw_gets_probability_zero():
    x, y = _data()
    seen = y != 1
    head = train_head(x[seen], y[seen], 3, HeadRecipe(), seed=0)
    probs = probabilities(head, x, 3)
    assert probs.shape == (24, 3) and (probs[:, 1] == 0).all()
    np.testing.assert_allclose(probs[:, [0, 2]], _sklearn_probs(x[seen], y[seen], x), atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_several_labels_get_one_logistic_regression_each():
    x, y = _data()
    multi = np.eye(3, dtype=int)[y]
    multi[::4, 2] = 1  # label 2 on every fourth image as well
    probs = probabilities(train_head(x, multi, 3, HeadRecipe(), seed=0, multilabel=True), x, 3, multilabel=True)
    assert probs.dtype == np.float32 and probs.shape == (24, 3)
    for label in range(3):
        np.testing.assert_allclose(probs[:, label], _sklearn_probs(x, multi[:, label], x)[:, 1], atol=1e-5)


def test_each_row_is_the_probability_from_the_head_of_the_fold_that_held_it_out():
    x, y = _data(per_class=6)
    recipe = HeadRecipe()
    oof = out_of_fold(x, y, 3, 3, recipe, seed=4)
    expected = np.zeros_like(oof)
    for k, held in enumerate(fold_indices(y, 3, seed=4, multilabel=False)):
        train = np.setdiff1d(np.arange(len(y)), held)
        expected[held] = _sklearn_probs(x[train], y[train], x[held], seed=4 + k)
    np.testing.assert_allclose(oof, expected, atol=1e-5)
