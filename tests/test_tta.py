"""Test-time augmentation in predict and eval: the views are built and averaged as documented.

The expected probabilities come from the checkpoint's network run by hand on views made here with
torchvision's functional API, independently of vggtune's transform.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_cli_here
from torchvision.transforms.v2 import functional as TF

from vggtune.data.images import load_rgb
from vggtune.use.inference import Predictions, load_model


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_model(tiny_ckpt, "cpu")  # untrained (conftest): the views are checked against this model


def views_by_hand(model, path, mode: str) -> torch.Tensor:
    prep = model.preprocessing
    image = TF.resize(load_rgb(path), prep.resize_size, antialias=True)  # a PIL image, resized by PIL
    crops = (
        list(TF.five_crop(image, prep.image_size)) if mode == "five_crop" else [TF.center_crop(image, prep.image_size)]
    )
    if mode == "flip":
        crops.append(TF.horizontal_flip(crops[0]))
    return torch.stack(
        [TF.normalize(TF.to_dtype(TF.to_image(c), torch.float32, scale=True), prep.mean, prep.std) for c in crops]
    )


def tta_probs_by_hand(model, paths, mode: str) -> torch.Tensor:
    with torch.inference_mode():
        return torch.stack([model.module(views_by_hand(model, p, mode)).softmax(1).mean(0) for p in paths])


@pytest.mark.parametrize("mode", ["flip", "five_crop"])
def test_predict_averages_the_probabilities_of_the_views(model, tiny_data, tmp_path, mode):
    paths = sorted(tiny_data.rglob("*.*"))[::5]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in paths:
        (folder / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    inputs = sorted(folder.iterdir())
    proc = run_cli_here(
        "predict",
        f"ckpt={model.path}",
        f"input={folder}",
        f"tta={mode}",
        "calibrate=false",
        "top_k=3",
        "num_workers=0",
        "device=cpu",
        "output=p.csv",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    expected = tta_probs_by_hand(model, inputs, mode)
    plain = tta_probs_by_hand(model, inputs, "none")
    assert not torch.allclose(expected, plain, atol=1e-4)  # the views do change the answer
    for row, probs in zip(rows, expected):
        got = {row[f"class_{k}"]: float(row[f"probability_{k}"]) for k in (1, 2, 3)}
        assert got == pytest.approx(dict(zip(model.class_names, probs.tolist())), abs=1e-5)


def test_eval_reports_the_gain_of_the_views_over_the_plain_view(model, tiny_data, tmp_path):
    proc = run_cli_here(
        "eval",
        f"ckpt={model.path}",
        f"data.root={tiny_data}",
        "tta=flip",
        "calibrate=false",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'ev'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    paths = sorted(tiny_data.rglob("*.*"))
    truth = np.array([model.class_names.index(p.parent.name) for p in paths])
    acc_tta = float((tta_probs_by_hand(model, paths, "flip").argmax(1).numpy() == truth).mean())
    acc_plain = float((tta_probs_by_hand(model, paths, "none").argmax(1).numpy() == truth).mean())
    tta = summary["tta"]
    assert tta["mode"] == "flip" and tta["views"] == 2
    assert summary["metrics"]["acc"] == pytest.approx(acc_tta, abs=1e-6)
    assert tta["acc_without"] == pytest.approx(acc_plain, abs=1e-6)
    assert tta["acc_gain"] == pytest.approx(acc_tta - acc_plain, abs=1e-6)
    assert "tta=flip (2 views)" in proc.stdout + proc.stderr


def test_the_temperature_applies_to_each_view_before_the_average():
    logits = torch.tensor([[[4.0, 0.0], [0.0, 2.0]]])  # one image, two views
    pred = Predictions([0], logits, 2.0, {})
    expected = (logits[0] / 2.0).softmax(1).mean(0)
    torch.testing.assert_close(pred.probs[0], expected)
    torch.testing.assert_close(pred.plain_probs[0], (logits[0, 0] / 2.0).softmax(0))
    torch.testing.assert_close(pred.uncalibrated().probs[0], logits[0].softmax(1).mean(0))
