"""``vggtune.use.heldout`` in this process: the held-out images as the exported file takes them, the seeded
calibration sample, and the scores of a format against the labels (scikit-learn) and against fp32."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb
from vggtune.data.transforms import unit_transform
from vggtune.use import heldout
from vggtune.use.evaluation import LabelledImages
from vggtune.use.inference import find_images, load_model


@pytest.fixture(scope="module")
def loaded(tiny_ckpt):
    return load_model(tiny_ckpt, "cpu")


def _folder(tmp_path: Path, tiny_data: Path, per_class: int = 2) -> Path:
    """``per_class`` images of each of tiny_data's classes, an unreadable one, and a folder of no known class."""
    root = tmp_path / "held"
    for d in sorted(p for p in tiny_data.iterdir() if p.is_dir()):
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_class]:
            shutil.copy(f, root / d.name / f.name)
    (root / d.name / "broken.png").write_text("not a picture\n")
    (root / "zebra").mkdir()
    shutil.copy(f, root / "zebra" / "z.png")
    return root


def test_held_out_images_from_class_folders_are_decoded_as_the_exported_file_takes_them(tmp_path, tiny_data, loaded):
    root = _folder(tmp_path, tiny_data)
    held = heldout.held_out(loaded, str(root), "test")
    size = loaded.preprocessing.image_size
    assert held.images.shape == (6, 3, size, size) and held.images.dtype == torch.float32
    assert 0.0 <= float(held.images.min()) and float(held.images.max()) <= 1.0
    assert str(root.resolve()) in held.source
    broken = str((root / loaded.class_names[-1] / "broken.png").resolve())
    assert list(held.left_out) == [broken]
    # Each image is its file through unit_transform, and its target is the index of its folder's class.
    transform = unit_transform(loaded.preprocessing)
    files = {
        loaded.class_names.index(d.name): [transform(load_rgb(f)) for f in sorted(d.glob("img_*"))]
        for d in root.iterdir()
        if d.name in loaded.class_names
    }
    assert sorted(held.targets) == [0, 0, 1, 1, 2, 2]
    for image, target in zip(held.images, held.targets):
        assert any(torch.equal(image, f) for f in files[target])


def test_held_out_from_the_run_reads_its_split_and_refuses_an_empty_subset_or_unreadable_files(
    tmp_path, tiny_data, tiny_ckpt, loaded, monkeypatch
):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.link(tiny_ckpt, run / "checkpoints" / "best.ckpt")
    names = loaded.class_names
    rows = [("test", f"{names[1]}/img_000.png", names[1]), ("test", f"{names[2]}/img_001.jpg", names[2])]
    rows.append(("train", f"{names[0]}/img_000.png", names[0]))
    (run / "split.csv").write_text("path,class,subset\n" + "".join(f"{p},{c},{s}\n" for s, p, c in rows))
    (run / "metrics.json").write_text(json.dumps({"data": {"root": str(tiny_data)}}))
    model = load_model(run / "checkpoints" / "best.ckpt", "cpu")
    held = heldout.held_out(model, None, "test")
    assert held.targets == [1, 2] and "test" in held.source and held.left_out == {}
    transform = unit_transform(model.preprocessing)
    assert torch.equal(held.images[1], transform(load_rgb(tiny_data / names[2] / "img_001.jpg")))

    # A source with no image of the checkpoint's classes (images_from_run and images_from_folder refuse one
    # themselves today; held_out still says so in one line if one comes back empty).
    monkeypatch.setattr(heldout, "images_from_run", lambda *a: LabelledImages([], "an empty split"))
    with pytest.raises(UserError, match="an empty split holds no image of the checkpoint's classes"):
        heldout.held_out(model, None, "test")

    bad = tmp_path / "bad"
    (bad / names[0]).mkdir(parents=True)
    for i in range(3):
        (bad / names[0] / f"x{i}.png").write_text("not a picture\n")
    with pytest.raises(UserError, match="none of the 3 images of .* could be read"):
        heldout.held_out(loaded, str(bad), "test")


def test_calibration_batches_are_a_seeded_sample_of_the_readable_images_in_batches(tmp_path, tiny_data, loaded):
    batches, source, paths = heldout.calibration_batches(loaded, str(tiny_data), count=5, batch_size=2, seed=3)
    expected = sorted(find_images(tiny_data))
    random.Random(3).shuffle(expected)
    assert paths == expected[:5] and source == f"the images in {tiny_data}"
    assert [b.shape[0] for b in batches] == [2, 2, 1] and all(b.dtype == np.float32 for b in batches)
    transform = unit_transform(loaded.preprocessing)
    np.testing.assert_array_equal(batches[2][0], transform(load_rgb(paths[4])).numpy())
    again, _, _ = heldout.calibration_batches(loaded, str(tiny_data), count=5, batch_size=2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(expected[0], mixed / "a.png")
    (mixed / "b.png").write_text("not a picture\n")
    batches, _, paths = heldout.calibration_batches(loaded, str(mixed), count=10)
    assert paths == [mixed / "a.png"] and [b.shape[0] for b in batches] == [1]

    (mixed / "a.png").unlink()
    with pytest.raises(UserError, match="none of the 1 calibration images"):
        heldout.calibration_batches(loaded, str(mixed), count=10)
    with pytest.raises(UserError, match="is not in the checkpoints/ folder of a training run"):
        heldout.calibration_batches(loaded, None, count=10)


def test_probabilities_run_in_batches_and_keep_every_image_in_order():
    images = torch.arange(35 * 2, dtype=torch.float32).view(35, 2)
    sizes = []

    def run(x):
        sizes.append(len(x))
        return (2 * x).double()

    probs = heldout.probabilities(run, images, batch_size=16)
    assert sizes == [16, 16, 3] and probs.dtype == torch.float32
    assert torch.equal(probs, 2 * images)
    assert [len(b) for b in heldout.in_batches(images, 35)] == [35]


def _held(targets) -> heldout.HeldOut:
    return heldout.HeldOut(torch.zeros(len(targets), 3, 2, 2), list(targets), "made here", {})


def test_single_label_scores_and_the_comparison_with_fp32_agree_with_sklearn():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    targets = rng.integers(0, 3, 40)
    reference = torch.from_numpy(rng.dirichlet(np.ones(3), 40)).float()
    candidate = reference.clone()
    flip = [0, 5, 9, 20]  # these images' answer moves to the next class
    for i in flip:
        candidate[i, (int(reference[i].argmax()) + 1) % 3] = 2.0
    held = _held(targets)
    ref_pred, cand_pred = reference.argmax(1).numpy(), candidate.argmax(1).numpy()
    s = heldout.scores(reference, held, names, None)
    assert s["acc"] == pytest.approx(accuracy_score(targets, ref_pred), abs=1e-6)
    assert s["f1"] == pytest.approx(f1_score(targets, ref_pred, average="macro", labels=[0, 1, 2]), abs=1e-6)
    assert torch.equal(heldout.decisions(reference, None), reference.argmax(1))

    c = heldout.compare(reference, candidate, held, names, None)
    assert c["images"] == 40 and c["source"] == "made here"
    assert c["agreement"] == pytest.approx(1 - len(flip) / 40)
    drop = 100 * (accuracy_score(targets, ref_pred) - accuracy_score(targets, cand_pred))
    assert c["accuracy_drop_points"] == pytest.approx(drop, abs=1e-4)
    assert c["quantized"]["acc"] == pytest.approx(accuracy_score(targets, cand_pred), abs=1e-6)
    assert c["max_abs_diff"] == pytest.approx(float((reference - candidate).abs().max()))
    same = heldout.compare(reference, reference.clone(), held, names, None)
    assert same["agreement"] == 1.0 and same["accuracy_drop_points"] == 0 and same["max_abs_diff"] == 0


def test_multi_label_scores_use_each_labels_threshold_as_sklearn_does():
    rng = np.random.default_rng(1)
    names = ["a", "b", "c"]
    hot = rng.integers(0, 2, (30, 3))
    hot[:3] = np.eye(3, dtype=int)  # every label has images
    targets = [tuple(int(j) for j in np.flatnonzero(row)) for row in hot]
    probs = torch.from_numpy(rng.random((30, 3))).float()
    thresholds = [0.3, 0.5, 0.7]
    decided = (probs.numpy() >= np.array(thresholds)).astype(int)
    assert torch.equal(heldout.decisions(probs, thresholds), torch.from_numpy(decided).long())
    s = heldout.scores(probs, _held(targets), names, thresholds)
    assert s["acc"] == pytest.approx(accuracy_score(hot, decided), abs=1e-6)  # subset accuracy
    assert s["f1"] == pytest.approx(f1_score(hot, decided, average="macro", zero_division=0), abs=1e-6)
    assert s["map"] == pytest.approx(average_precision_score(hot, probs.numpy(), average="macro"), abs=1e-5)

    candidate = probs.clone()
    candidate[0] = torch.from_numpy(1.0 - decided[0]).float()  # the first image's every decision is reversed
    c = heldout.compare(probs, candidate, _held(targets), names, thresholds)
    agree = (decided == (candidate.numpy() >= np.array(thresholds))).all(axis=1).mean()
    assert c["agreement"] == pytest.approx(float(agree)) == pytest.approx(29 / 30)
