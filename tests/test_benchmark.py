"""``vggtune benchmark`` on the tiny run's test images, its numbers recomputed from the files it wrote, and
``vggtune serve backend=auto | precision=bf16`` serving what it recommends."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli_here
from sklearn.metrics import accuracy_score, f1_score

from vggtune.core.errors import UserError
from vggtune.serve.backends import file_version
from vggtune.serve.choice import choose
from vggtune.use import export, heldout, quantize
from vggtune.use.benchmark import benchmark_file, peak
from vggtune.use.inference import load_model

FORMATS = "formats=[eager_fp32,torchscript,onnx_fp32,onnx_int8]"
QUICK = ["latency_runs=3", "throughput_batches=1", "throughput_batch=4", "calibration_images=8"]


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory) -> Path:
    """The tiny run with its checkpoint hard-linked (no 0.5 GB copy): the benchmark writes beside the checkpoint."""
    copy = tmp_path_factory.mktemp("bench") / "run"
    (copy / "checkpoints").mkdir(parents=True)
    for name in ("split.csv", "metrics.json"):
        shutil.copy(tiny_run / name, copy / name)
    os.link(tiny_run / "checkpoints" / "best.ckpt", copy / "checkpoints" / "best.ckpt")
    return copy


@pytest.fixture(scope="module")
def benched(run_copy, tmp_path_factory) -> tuple[Path, dict, str]:
    work = tmp_path_factory.mktemp("benchwork")
    proc = run_cli_here(
        "benchmark",
        f"ckpt={run_copy / 'checkpoints' / 'best.ckpt'}",
        FORMATS,
        *QUICK,
        f"hydra.run.dir={work / 'out'}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work / "out", json.loads((work / "out" / "benchmark.json").read_text()), proc.stderr + proc.stdout


@pytest.mark.slow
def test_every_format_is_scored_on_the_test_images_as_sklearn_scores_its_own_file(benched, run_copy):
    out, result, printed = benched
    ckpt = run_copy / "checkpoints" / "best.ckpt"
    model = load_model(ckpt, "cpu")
    held = heldout.held_out(model, None, "test")
    assert result["data"]["images"] == len(held.targets) and "test split" in result["data"]["source"]
    rows = {r["format"]: r for r in result["formats"]}
    assert list(rows) == ["eager_fp32", "torchscript", "onnx_fp32", "onnx_int8"]
    runners = {
        "eager_fp32": None,
        "torchscript": export.torchscript_runner(out / "files" / "model.pt"),
        "onnx_fp32": export.onnx_session_runner(out / "files" / "model.onnx"),
        "onnx_int8": export.onnx_session_runner(out / "files" / "model.int8.onnx"),
    }
    with torch.inference_mode():
        reference = (model.module(model_input(model, held.images)) / model.temperature).softmax(dim=1)
    for name, run in runners.items():
        probs = reference if run is None else heldout.probabilities(run, held.images)
        predicted = probs.argmax(1).numpy()
        row = rows[name]
        assert row["acc"] == pytest.approx(accuracy_score(held.targets, predicted), abs=1e-4), name
        assert row["f1"] == pytest.approx(f1_score(held.targets, predicted, average="macro"), abs=1e-4), name
        assert row["agreement"] == pytest.approx(float((predicted == reference.argmax(1).numpy()).mean()), abs=1e-4)
        size = ckpt.stat().st_size if run is None else Path(row["file"]).stat().st_size
        assert row["file_mb"] == pytest.approx(size / 1e6, abs=0.06)
        assert row["p50_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
        share = row["gflop_per_s"] / result["peak"]["gops"][row["precision"]]
        assert row["peak_share"] == pytest.approx(share, abs=2e-3)
    int8, fp32 = rows["onnx_int8"], rows["onnx_fp32"]
    assert int8["precision"] == "int8" and int8["file_mb"] < 0.3 * fp32["file_mb"]
    within = [r for r in result["formats"] if r["accuracy_drop_points"] <= result["max_accuracy_drop"]]
    assert result["recommended"]["format"] == max(within, key=lambda r: r["images_per_s"])["format"]
    assert f"Fastest within 1 accuracy point(s) of fp32: {result['recommended']['format']}" in printed
    with open(out / "benchmark.csv", newline="") as f:
        assert [r["format"] for r in csv.DictReader(f)] == list(rows)
    record = json.loads(benchmark_file(ckpt).read_text())
    assert record["checkpoint_version"] == file_version(ckpt) and record["recommended"] == result["recommended"]
    assert result["gflop_per_image"] > 0 and set(result["cpu"]) == {"cpu", "flags", "threads"}


def model_input(model, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    return (images - mean) / std


def _settings(**kw) -> dict:
    return {"backend": "auto", "precision": "fp32", "ckpt": None, "model": None, "device": "cpu", "chosen": None, **kw}


@pytest.mark.slow
def test_backend_auto_serves_what_the_benchmark_recommends_and_refuses_a_stale_one(benched, run_copy, tmp_path):
    _, result, _ = benched
    ckpt = run_copy / "checkpoints" / "best.ckpt"
    settings = _settings(ckpt=str(ckpt))
    choose(settings)
    best = result["recommended"]
    assert settings["chosen"]["format"] == best["format"]
    if best["format"].startswith("eager"):
        assert settings["ckpt"] == str(ckpt)
        assert settings["precision"] == ("bf16" if "bf16" in best["format"] else "fp32")
    else:
        assert settings["ckpt"] is None and settings["model"] == best["file"]

    record = benchmark_file(ckpt)
    saved = record.read_text()
    try:
        record.write_text(json.dumps({**json.loads(saved), "checkpoint_version": "0" * 12}))
        with pytest.raises(UserError, match="benchmark of an earlier version"):
            choose(_settings(ckpt=str(ckpt)))
    finally:
        record.write_text(saved)


def test_backend_and_precision_mistakes_are_one_line(tiny_ckpt, tmp_path, monkeypatch):
    ckpt = tiny_ckpt
    with pytest.raises(UserError, match=r"vggtune benchmark ckpt=.* has not run for this checkpoint"):
        choose(_settings(ckpt=str(ckpt)))
    with pytest.raises(UserError, match="chooses among the formats of a checkpoint"):
        choose(_settings(model=str(tmp_path / "m.onnx")))
    with pytest.raises(UserError, match="backend must be auto"):
        choose(_settings(backend="tensorrt", ckpt=str(ckpt)))
    with pytest.raises(UserError, match="precision must be one of fp32, bf16"):
        choose(_settings(backend=None, precision="fp16", ckpt=str(ckpt)))
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx2"}))
    import vggtune.serve.choice as choice

    monkeypatch.setattr(choice, "has_bf16", quantize.has_bf16)
    with pytest.raises(UserError, match="precision=bf16 needs a CPU with bf16"):
        choose(_settings(backend=None, precision="bf16", ckpt=str(ckpt)))
    proc = run_cli_here(
        "serve", f"ckpt={ckpt}", "backend=auto", "port=8123", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "has not run for this checkpoint", "vggtune benchmark")


def test_bad_benchmark_settings_are_one_line(tiny_ckpt, tmp_path):
    ckpt = tiny_ckpt
    for overrides, needle in [
        (["formats=[onnx_fp16]"], "unknown format 'onnx_fp16'"),
        (["max_accuracy_drop=-2"], "max_accuracy_drop"),
        (["latency_runs=0"], "latency_runs"),
        (["data.subset=holdout"], "data.subset"),
    ]:
        proc = run_cli_here("benchmark", f"ckpt={ckpt}", *overrides, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
        assert_one_line_error(proc, needle)


def test_the_peak_probe_shows_its_arithmetic():
    p = peak(bf16=False, seconds=0.2)
    assert p["gops"]["fp32"] > 0 and "int8" in p["gops"]
    assert "2 x 1024^2 x 1024 = 2.15 G operations" in p["how"]["fp32"]


@pytest.mark.slow
def test_serve_backend_auto_over_http_says_what_it_runs_and_answers_as_that_file(
    benched, run_copy, tiny_data, tmp_path
):
    from test_serve import Server, post

    _, result, _ = benched
    server = Server(tmp_path, f"ckpt={run_copy / 'checkpoints' / 'best.ckpt'}", "backend=auto", "max_batch_size=1")
    try:
        server.wait_ready()
        import urllib.request

        info = json.load(urllib.request.urlopen(server.url + "/info", timeout=10))["model"]
        best = result["recommended"]
        assert info["chosen_by_benchmark"]["format"] == best["format"]
        expected_backend = {"onnx": "onnx", "torc": "torchscript", "eage": "torch"}[best["format"][:4]]
        assert info["backend"] == expected_backend
        assert info["precision"] == {"onnx_int8": "int8", "eager_bf16": "bf16"}.get(best["format"], "fp32")
        image = sorted(tiny_data.rglob("*.png"))[0]
        status, answer = post(server.url + "/predict", image.read_bytes(), "image/png")
        assert status == 200, answer
        from vggtune.data.images import load_rgb
        from vggtune.serve.backends import load_backend

        direct = (
            load_backend(None, best["file"], "cpu")
            if best["file"].endswith((".onnx", ".pt"))
            else load_backend(best["file"], None, "cpu", precision=info["precision"])
        )
        probs = direct.probabilities(direct.transform(load_rgb(image)).unsqueeze(0))[0]
        got = answer["predictions"][0]["probabilities"]
        assert [got[n] for n in direct.class_names] == pytest.approx(probs.tolist(), abs=1e-5)
    finally:
        server.stop()


@pytest.mark.skipif(not quantize.has_bf16(), reason="this CPU has no bf16 instructions")
def test_precision_bf16_runs_the_checkpoint_in_bfloat16_close_to_fp32(tiny_ckpt, tiny_data):
    from vggtune.data.images import load_rgb
    from vggtune.serve.backends import load_backend

    ckpt = str(tiny_ckpt)
    fp32, bf16 = load_backend(ckpt, None, "cpu"), load_backend(ckpt, None, "cpu", precision="bf16")
    assert {p.dtype for p in bf16.loaded.module.model.parameters()} == {torch.bfloat16}
    assert bf16.info()["precision"] == "bf16" and fp32.info()["precision"] == "fp32" and not bf16.can_explain
    views = torch.stack([fp32.transform(load_rgb(p)) for p in sorted(tiny_data.rglob("*.*"))[:6]])
    a, b = fp32.probabilities(views), bf16.probabilities(views)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    torch.testing.assert_close(b, a, atol=0.03, rtol=0)
