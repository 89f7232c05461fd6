"""The audit's parts on small arrays, in this process: duplicate pairs, cleanlab's label issues and outliers.

tests/test_audit.py runs `vggtune audit` on planted data (slow: it fits a head per fold); these are quick."""

from __future__ import annotations

import numpy as np
import pytest

from vggtune.core.errors import UserError
from vggtune.inspect.duplicates import Pair, exact_pairs, near_pairs, pair_flags
from vggtune.inspect.folds import HeadRecipe, in_sample, out_of_fold
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


def _blobs(per_class: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), per_class)
    centres = 3.0 * rng.normal(size=(3, dims))
    return centres[y] + rng.normal(size=(len(y), dims)), y


def test_each_row_comes_from_a_head_that_never_saw_its_label():
    x, truth = _blobs(10, 60)  # 30 images in 60 dimensions: a head can fit any labelling of its own images
    given = truth.copy()
    given[3] = 2  # a class-0 image labelled 2
    recipe = HeadRecipe()
    own = in_sample(x, given, 3, recipe, seed=0)
    oof = out_of_fold(x, given, 3, 5, recipe, seed=0)
    assert own[3].argmax() == 2  # trained on its wrong label, the head vouches for it ...
    assert oof[3].argmax() == 0 and oof[3, 2] < 0.2  # ... the head that held it out does not
    assert oof.shape == (30, 3) and np.allclose(oof.sum(1), 1, atol=1e-5)
    assert (oof.argmax(1) == truth).mean() >= 0.9
    np.testing.assert_array_equal(oof, out_of_fold(x, given, 3, 5, recipe, seed=0))  # seeded


def test_several_labels_per_image_get_one_probability_per_label_even_when_a_fold_lacks_one():
    x, y = _blobs(8, 20, seed=1)
    multi = np.zeros((len(y), 4), dtype=np.int64)
    multi[np.arange(len(y)), y] = 1
    multi[0, 3] = 1  # label 3 on one image only: most folds' heads never see it
    probs = out_of_fold(x, multi, 4, 4, HeadRecipe(), seed=0, multilabel=True)
    assert probs.shape == (24, 4) and ((probs >= 0) & (probs <= 1)).all()
    assert ((probs[:, :3] >= 0.5) == multi[:, :3].astype(bool)).mean() >= 0.9


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("c", 0, "audit.c must be a positive number"),
        ("vectors", "fc8", "audit.vectors must be one of conv, fc7"),
        ("filter_by", "loss", "audit.filter_by must be one of lowest_self_confidence"),
    ],
)
def test_a_wrong_head_setting_is_one_line(key, value, message):
    from omegaconf import OmegaConf

    from vggtune.config_errors import compose_task
    from vggtune.tasks.audit import check_settings

    audit = compose_task("audit", []).audit
    OmegaConf.update(audit, key, value)
    with pytest.raises(UserError, match=message) as e:
        check_settings(audit)
    assert "\n" not in str(e.value)


def test_the_default_filter_flags_cleanlabs_count_of_the_least_confident_labels():
    import cleanlab.filter

    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), 20)
    probs = rng.dirichlet(np.ones(3) * 0.5, size=60) * 0.5 + 0.5 * _confident(truth, 3)
    given = truth.copy()
    given[[1, 22, 45, 50]] = [1, 2, 0, 1]
    count = int(cleanlab.filter.find_label_issues(given, probs).sum())  # cleanlab's default, prune_by_noise_rate
    issues = find_label_issues(given, probs)
    assert count > 0 and len(issues.ranked) == count
    assert set(issues.ranked) == set(np.argsort(probs[np.arange(60), given])[:count])
    assert list(issues.quality[issues.ranked]) == sorted(issues.quality[issues.ranked])
    theirs = find_label_issues(given, probs, filter_by="prune_by_noise_rate").ranked
    assert set(theirs) == set(np.flatnonzero(cleanlab.filter.find_label_issues(given, probs)))
