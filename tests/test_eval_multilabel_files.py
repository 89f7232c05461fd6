"""What ``vggtune eval`` writes for a multi-label model, checked against scikit-learn on the same predictions.

The network is left out: the task's last step (:func:`evaluate_multilabel`) is given predictions made
here, so the files it writes can be checked at unit level (the slow tests in test_multilabel.py run
the whole command on a trained checkpoint).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score

from vggtune.tasks.eval_multilabel import evaluate_multilabel
from vggtune.use.evaluation import LabelledImages
from vggtune.use.inference import Predictions

NAMES = ["cat", "dog", "sky", "tree"]
THRESHOLDS = [0.5, 0.35, 0.6, 0.45]


def _case(views: int, seed: int = 0):
    """16 images, each with one to three of the four labels, and noisy logits that mostly agree."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(16, 4, generator=g) < 0.45
    truth[truth.sum(1) == 0, 0] = True  # every image has a label
    truth[:4] = torch.eye(4, dtype=torch.bool)  # and every label an image
    logits = (truth.float() * 2 - 1).unsqueeze(1) * 1.2 + torch.randn(16, views, 4, generator=g) * 1.5
    paths = [Path(f"img{i:02d}.png") for i in range(16)]
    items = [(p, tuple(truth[i].nonzero().flatten().tolist())) for i, p in enumerate(paths)]
    data = LabelledImages(items=items, source="labels.csv")
    pred = Predictions(list(range(16)), logits, 1.0, {}, multilabel=True)
    model = SimpleNamespace(class_names=NAMES, path=Path("run/checkpoints/best.ckpt"), label_delim="|")
    return model, data, pred, paths, truth.numpy()


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_and_tables_match_sklearn(tmp_path, caplog):
    model, data, pred, paths, truth = _case(views=1)
    with caplog.at_level(logging.INFO, logger="vggtune.tasks.eval_multilabel"):
        summary = evaluate_multilabel(tmp_path, model, data, pred, paths, {}, THRESHOLDS, "none")
    probs = pred.probs.numpy()
    predicted = probs >= np.array(THRESHOLDS, dtype=np.float32)

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == summary["metrics"]
    m = written["metrics"]
    assert m["acc"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)  # subset accuracy
    assert m["map"] == pytest.approx(average_precision_score(truth, probs, average="macro"), abs=1e-5)
    assert m["f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0), abs=1e-6)
    assert written["thresholds"] == dict(zip(NAMES, THRESHOLDS))
    assert written["data"]["images"] == 16 and written["multilabel"] is True

    rows = _read(tmp_path / "per_label.csv")
    assert [r["label"] for r in rows] == NAMES
    for key, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = score(truth, predicted, average=None, zero_division=0)
        assert [float(r[key]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-4), key
    aps = [average_precision_score(truth[:, j], probs[:, j]) for j in range(4)]
    assert [float(r["ap"]) for r in rows] == pytest.approx(aps, abs=1e-4)
    assert [int(r["images"]) for r in rows] == truth.sum(0).tolist()
    assert [int(r["predicted"]) for r in rows] == predicted.sum(0).tolist()

    wrong = (predicted != truth).sum(1)
    mistakes = _read(tmp_path / "misclassified.csv")
    assert {r["path"] for r in mistakes} == {str(paths[i]) for i in np.flatnonzero(wrong)}
    counts = [int(wrong[int(r["path"][3:5])]) for r in mistakes]
    assert counts == sorted(counts, reverse=True)  # the most wrong labels first
    for r in mistakes:
        i = int(r["path"][3:5])
        assert r["true"] == "|".join(n for j, n in enumerate(NAMES) if truth[i, j])
        assert r["missed"] == "|".join(n for j, n in enumerate(NAMES) if truth[i, j] and not predicted[i, j])
        assert r["extra"] == "|".join(n for j, n in enumerate(NAMES) if predicted[i, j] and not truth[i, j])

    assert (tmp_path / "per_label.png").stat().st_size > 1000
    assert f"subset accuracy {m['acc']:.4f}" in caplog.text and "each label at its threshold" in caplog.text


def test_tta_gain_is_against_the_plain_view(tmp_path):
    model, data, pred, paths, truth = _case(views=3, seed=1)
    summary = evaluate_multilabel(tmp_path, model, data, pred, paths, {}, THRESHOLDS, "flip")
    plain = pred.plain_probs.numpy()
    gain = summary["tta"]
    assert gain["mode"] == "flip" and gain["views"] == 3
    assert gain["map_without"] == pytest.approx(average_precision_score(truth, plain, average="macro"), abs=1e-5)
    assert gain["map_gain"] == pytest.approx(summary["metrics"]["map"] - gain["map_without"], abs=1e-9)
    averaged = pred.probs.numpy()  # the mean of the three views' sigmoids is what the metrics score
    assert summary["metrics"]["map"] == pytest.approx(
        average_precision_score(truth, averaged, average="macro"), abs=1e-5
    )
