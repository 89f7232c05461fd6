"""Temperature scaling: fitted in training, stored in the checkpoint, used by eval, predict and export.

Every expected value is computed here independently: the temperature by scipy's scalar minimiser
on scikit-learn's log loss, the ECE by a numpy loop over the bins, the probabilities by running the
checkpoint's network by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli_here
from omegaconf import OmegaConf
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss
from test_metrics import ScriptedClassifier, _loader, _scripted

from vggtune.data.images import load_rgb
from vggtune.model import calibration
from vggtune.use.inference import load_model


def scipy_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The NLL-minimising temperature by another optimiser and another loss implementation."""
    z, y = logits.double().numpy(), targets.numpy()
    labels = list(range(z.shape[1]))

    def loss(log_t):
        return log_loss(y, torch.from_numpy(z / np.exp(log_t)).softmax(1).numpy(), labels=labels)

    return float(np.exp(minimize_scalar(loss, bounds=(-3, 4.6), method="bounded", options={"xatol": 1e-7}).x))


def numpy_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    p = probs.double().numpy()
    conf, right = p.max(1), (p.argmax(1) == targets.numpy())
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return total


def overconfident(n: int = 4000, classes: int = 5, scale: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z): z is calibrated by construction, ``scale * z`` is over-confident."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, classes, generator=g)
    targets = torch.multinomial(z.softmax(1), 1, generator=g).flatten()
    return scale * z, targets


def test_the_fitted_temperature_undoes_overconfidence_and_matches_scipy():
    logits, targets = overconfident()
    t = calibration.fit_temperature(logits, targets)
    assert t == pytest.approx(scipy_temperature(logits, targets), rel=1e-4)
    assert 3.0 < t < 5.0  # the scale the logits were inflated by

    before, after = logits.softmax(1), (logits / t).softmax(1)
    assert calibration.calibration_error(before, targets) == pytest.approx(numpy_ece(before, targets), abs=1e-5)
    assert calibration.calibration_error(after, targets) == pytest.approx(numpy_ece(after, targets), abs=1e-5)
    assert numpy_ece(after, targets) < numpy_ece(before, targets) / 3
    assert (after.argmax(1) == before.argmax(1)).all()  # not one prediction changes

    rows = calibration.reliability_bins(before, targets)
    assert sum(r["images"] for r in rows) == len(targets)
    weighted = sum(r["images"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["images"]) / len(targets)
    assert weighted == pytest.approx(numpy_ece(before, targets), abs=1e-5)


def test_nothing_is_fitted_when_every_image_is_right_and_non_finite_rows_are_left_out():
    targets = torch.tensor([0, 1, 2, 0])
    assert calibration.fit_temperature(10 * torch.eye(3)[targets], targets) is None  # no minimum: T would go to 0

    logits, targets = overconfident(n=500, seed=1)
    with_nan = torch.cat([logits, torch.full((3, logits.shape[1]), float("nan"))])
    t = calibration.fit_temperature(with_nan, torch.cat([targets, torch.tensor([0, 1, 2])]))
    assert t == pytest.approx(calibration.fit_temperature(logits, targets), rel=1e-6)


def test_training_fits_the_temperature_on_the_validation_logits_and_checkpoints_keep_it(tmp_path):
    logits, targets = _scripted(5, seed=3)
    logits = 3.0 * logits  # over-confident, so that the fit has something to undo
    module = ScriptedClassifier(logits, 5)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=2,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=_loader(targets), val_dataloaders=_loader(targets))

    expected_t = scipy_temperature(logits, targets)  # the whole validation set, the sanity batches not again
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["val/temperature"] == pytest.approx(expected_t, rel=1e-3)
    assert logged["val/ece"] == pytest.approx(numpy_ece(logits.softmax(1), targets), abs=1e-5)
    assert logged["val/ece_calibrated"] == pytest.approx(numpy_ece((logits / expected_t).softmax(1), targets), abs=1e-4)
    assert module.calibration["images"] == len(targets)

    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    fresh = ScriptedClassifier(logits, 5)
    assert fresh.temperature == 1.0
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.temperature == pytest.approx(expected_t, rel=1e-3)


def test_a_model_right_on_every_validation_image_keeps_no_temperature(tmp_path):
    targets = torch.arange(3).repeat_interleave(4)
    module = ScriptedClassifier(8.0 * torch.eye(3)[targets], 3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=_loader(targets), verbose=False)
    assert module.calibration is None and module.temperature == 1.0
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert "calibration" not in checkpoint["vggtune"]


def test_a_runs_metrics_json_names_the_temperature_of_its_best_checkpoint(tiny_run):
    # A real run's metrics.json says which temperature its best checkpoint holds (not the last epoch's).
    summary = json.loads((tiny_run / "metrics.json").read_text())
    stored = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["vggtune"]
    assert summary["best"].get("calibration") == stored.get("calibration")


def test_a_validation_on_its_own_fits_the_temperature_too():
    # trainer.validate runs under inference_mode, where autograd (the fit's LBFGS) is off.
    logits, targets = _scripted(3, seed=4)
    module = ScriptedClassifier(2.0 * logits, 3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=_loader(targets), verbose=False)
    assert module.temperature == pytest.approx(scipy_temperature(2.0 * logits, targets), rel=1e-3)


# --- eval, predict and export of a checkpoint with a temperature --------------------------------


@pytest.fixture(scope="module")
def calibrated(tiny_ckpt, tiny_data, tmp_path_factory) -> tuple[Path, float, list[Path], torch.Tensor]:
    """The tiny (untrained) checkpoint made over-confident (its last layer scaled until the top probability is
    about 1) with a temperature fitted here on all 30 images: (checkpoint, temperature, images, classes)."""
    source = tiny_ckpt
    model = load_model(source, "cpu")
    paths = sorted(tiny_data.rglob("*.*"))
    targets = torch.tensor([model.class_names.index(p.parent.name) for p in paths])
    scale = 60.0 / float(raw_logits(model, paths).std())  # logits = W f + b: scaling W and b scales them
    state = torch.load(source, map_location="cpu", weights_only=True)
    for key in ("model.classifier.6.weight", "model.classifier.6.bias"):  # the final layer, for both heads
        state["state_dict"][key] = scale * state["state_dict"][key]
    state["vggtune"].pop("calibration", None)
    path = tmp_path_factory.mktemp("calibrated") / "overconfident.ckpt"
    torch.save(state, path)
    logits = raw_logits(load_model(path, "cpu"), paths)
    accuracy = float((logits.argmax(1) == targets).float().mean())
    assert logits.softmax(1).max(1).values.mean() > 0.98 and accuracy < 0.8  # over-confident, as meant
    t = scipy_temperature(logits, targets)
    state["vggtune"]["calibration"] = {
        "temperature": t,
        "images": len(paths),
        "epoch": 0,
        "ece": 0.0,
        "ece_calibrated": 0.0,
        "fitted_on": "val",
    }
    torch.save(state, path)
    return path, t, paths, targets


def raw_logits(model, paths) -> torch.Tensor:
    with torch.inference_mode():
        return model.module(torch.stack([model.transform(load_rgb(p)) for p in paths]))


def test_eval_reports_the_ece_before_and_after_the_checkpoints_temperature(calibrated, tiny_data, tmp_path):
    ckpt, t, paths, targets = calibrated
    run_dir = tmp_path / "ev"
    proc = run_cli_here(
        "eval",
        f"ckpt={ckpt}",
        f"data.root={tiny_data}",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cal = json.loads((run_dir / "metrics.json").read_text())["calibration"]
    logits = raw_logits(load_model(ckpt, "cpu"), paths)
    assert cal["temperature"] == pytest.approx(t) and cal["applied"] is True
    assert cal["ece"] == pytest.approx(numpy_ece(logits.softmax(1), targets), abs=1e-5)
    assert cal["ece_calibrated"] == pytest.approx(numpy_ece((logits / t).softmax(1), targets), abs=1e-5)
    assert cal["ece_calibrated"] < cal["ece"]
    assert cal["nll"] == pytest.approx(
        log_loss(targets.numpy(), logits.double().softmax(1).numpy(), labels=[0, 1, 2]), rel=1e-4
    )
    assert (run_dir / "reliability.png").stat().st_size > 10_000
    assert f"-> {cal['ece_calibrated']:.4f} with the temperature {t:.3f}" in proc.stdout + proc.stderr


@pytest.mark.parametrize("calibrate", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_predict_divides_the_logits_by_the_temperature_unless_told_not_to(calibrated, tmp_path, calibrate):
    ckpt, t, paths, _ = calibrated
    folder = tmp_path / "in"
    folder.mkdir()
    images = []
    for p in paths[::7]:
        images.append(folder / f"{p.parent.name}-{p.name}")
        images[-1].write_bytes(p.read_bytes())
    images.sort()
    proc = run_cli_here(
        "predict",
        f"ckpt={ckpt}",
        f"input={folder}",
        "top_k=3",
        "num_workers=0",
        "device=cpu",
        f"calibrate={str(calibrate).lower()}",
        "output=p.csv",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    logits = raw_logits(load_model(ckpt, "cpu"), images)
    expected = (logits / (t if calibrate else 1.0)).softmax(1)
    names = load_model(ckpt, "cpu").class_names
    for row, probs in zip(rows, expected):
        got = {row[f"class_{k}"]: float(row[f"probability_{k}"]) for k in (1, 2, 3)}
        assert got == pytest.approx({n: float(p) for n, p in zip(names, probs)}, abs=1e-5)
    assert ("divided by the temperature" in proc.stdout + proc.stderr) == calibrate


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_the_exported_softmax_has_the_temperature_folded_in(calibrated, tmp_path):
    from vggtune.tasks.export import export_checkpoint

    ckpt, t, paths, _ = calibrated
    out = tmp_path / "m.pt"
    info = export_checkpoint(
        OmegaConf.create(
            {
                "ckpt": str(ckpt),
                "format": "torchscript",
                "output": str(out),
                "logits": False,
                "paths": {"run_dir": str(tmp_path / "run")},
            }
        )
    )
    assert info["calibration"]["temperature"] == pytest.approx(t) and info["calibration"]["applied"] is True
    model = load_model(ckpt, "cpu")
    raw = torch.stack([model.transform(load_rgb(p)) for p in paths[:4]])
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    got = torch.jit.load(str(out))(raw * std + mean).detach()  # the file takes [0, 1] images
    torch.testing.assert_close(got, (raw_logits(model, paths[:4]) / t).softmax(1), atol=1e-4, rtol=1e-4)

    plain = export_checkpoint(
        OmegaConf.create(
            {
                "ckpt": str(ckpt),
                "format": "torchscript",
                "calibrate": False,
                "output": str(tmp_path / "raw.pt"),
                "logits": False,
                "paths": {"run_dir": str(tmp_path / "run2")},
            }
        )
    )
    assert plain["calibration"]["applied"] is False and plain["calibration"]["temperature"] == pytest.approx(t)
    got = torch.jit.load(str(tmp_path / "raw.pt"))(raw * std + mean).detach()
    torch.testing.assert_close(got, raw_logits(model, paths[:4]).softmax(1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "task, key, value, needle",
    [
        ("predict", "calibrate", "maybe", "calibrate must be true or false"),
        ("predict", "tta", "rotate", "tta must be one of none, flip, five_crop"),
        ("eval", "tta", "flips", "tta must be one of"),
    ],
)
def test_bad_calibrate_and_tta_values_are_refused_in_one_line(
    calibrated, tiny_data, tmp_path, task, key, value, needle
):
    ckpt = calibrated[0]
    where = f"input={tiny_data}" if task == "predict" else f"data.root={tiny_data}"
    proc = run_cli_here(task, f"ckpt={ckpt}", where, f"{key}={value}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert_one_line_error(proc, needle)
