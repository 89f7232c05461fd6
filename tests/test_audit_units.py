"""The audit's parts on small arrays, in this process: duplicate pairs, cleanlab's label issues and outliers.

tests/test_audit.py runs `vggtune audit` on planted data (slow: it fits a head per fold); these are quick."""

from __future__ import annotations

import numpy as np
import pytest

from vggtune.core.errors import UserError
from vggtune.inspect.duplicates import Pair, exact_pairs, near_pairs, pair_flags
from vggtune.inspect.label_issues import by_loss, find_label_issues, outlier_scores


def test_exact_pairs_are_every_pair_of_equal_digests():
    assert exact_pairs(["a", "b", "a", "c", "a"]) == [
        Pair(0, 2, "exact", 1.0),
        Pair(0, 4, "exact", 1.0),
        Pair(2, 4, "exact", 1.0),
    ]
    assert exact_pairs(["a", "b"]) == []


@pytest.mark.parametrize("block", [1, 1024])
def test_near_pairs_find_a_noisy_copy_most_similar_first_and_skip_known_pairs(block):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 256))
    vectors[3] = vectors[0] + 0.01 * rng.normal(size=256)  # a re-encoded copy of image 0
    vectors[5] = vectors[1] + 0.3 * rng.normal(size=256)  # a looser copy of image 1
    found = near_pairs(vectors, threshold=0.9, block=block)
    assert [(p.a, p.b) for p in found] == [(0, 3), (1, 5)]
    assert found[0].similarity > found[1].similarity >= 0.9 and all(p.kind == "near" for p in found)
    assert [(p.a, p.b) for p in near_pairs(vectors, 0.9, skip={(0, 3)}, block=block)] == [(1, 5)]


def test_a_pair_is_a_leak_across_subsets_and_a_conflict_across_labels():
    pair = Pair(0, 2, "exact", 1.0)
    assert pair_flags(pair, ["train", "train", "val"], ["cat", "dog", "cat"]) == (True, False)
    assert pair_flags(pair, ["train", "val", "train"], ["cat", "dog", "dog"]) == (False, True)


def _confident(labels: np.ndarray, classes: int, right: float = 0.9) -> np.ndarray:
    probs = np.full((len(labels), classes), (1 - right) / (classes - 1))
    probs[np.arange(len(labels)), labels] = right
    return probs


def test_the_image_whose_probabilities_contradict_its_label_is_flagged_first_with_the_favoured_class():
    truth = np.repeat(np.arange(3), 10)
    probs = _confident(truth, 3)
    given = truth.copy()
    given[4] = 2  # a class-0 image labelled 2: the out-of-fold probabilities still say 0
    issues = find_label_issues(given, probs)
    assert issues.ranked.tolist() == [4]
    assert issues.suggested[4] == 0 and issues.suggested[12] == 1
    # self_confidence: the probability of the given label
    np.testing.assert_allclose(issues.quality, probs[np.arange(len(given)), given])
    assert by_loss(given, probs, 2)[0] == 4


def test_several_labels_per_image_go_through_the_multilabel_functions():
    rng = np.random.default_rng(1)
    labels = [(0,), (1,), (0, 1), (2,)] * 6
    probs = np.array([[0.9 if c in label else 0.05 for c in range(3)] for label in labels])
    probs = np.clip(probs + rng.uniform(-0.02, 0.02, probs.shape), 0, 1)
    labels[5] = (2,)  # image 5 shows label 1 only
    issues = find_label_issues(labels, probs, multilabel=True)
    assert 5 in issues.ranked.tolist()[:2]
    assert issues.suggested[5] == (1,) and issues.suggested[2] == (0, 1)
    assert issues.quality.shape == (len(labels),) and issues.quality[5] < np.median(issues.quality)


def test_a_class_without_images_is_one_line():
    with pytest.raises(UserError, match="class index 2 has no image left") as e:
        find_label_issues(np.array([0, 1, 0, 1]), _confident(np.array([0, 1, 0, 1]), 3))
    assert "\n" not in str(e.value)


def test_the_vector_far_from_every_other_is_the_outlier():
    rng = np.random.default_rng(2)
    features = 0.5 * rng.normal(size=(40, 8))
    features[:, 0] += 5.0  # every image near one direction (cleanlab compares 8-d features by cosine) ...
    features[17] = [0, 0, 0, 0, 0, 0, 0, 5.0]  # ... but this one
    scores, outlier = outlier_scores(features)
    assert outlier.tolist() == [i == 17 for i in range(40)]
    assert scores.argmin() == 17 and ((scores >= 0) & (scores <= 1)).all()
    assert outlier_scores(features[:1])[1].tolist() == [False]  # one image: no neighbours to compare with
