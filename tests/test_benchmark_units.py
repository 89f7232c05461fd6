"""``vggtune benchmark``'s own logic in this process: its settings, which formats it skips, the recommendation
and the table, and one short run over the untrained tiny checkpoint (the eager formats, numbers checked with
scikit-learn). tests/test_benchmark.py benchmarks every exported format of a trained run (slow)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, f1_score

from vggtune.core.errors import UserError
from vggtune.serve.backends import file_version
from vggtune.tasks import benchmark as task
from vggtune.use import benchmark, export, heldout, quantize
from vggtune.use.benchmark import benchmark_file
from vggtune.use.inference import load_model


def _cfg(**kw):
    return OmegaConf.create(kw)


def test_settings_default_to_every_format_and_refuse_bad_values_in_one_line():
    s = task._settings(_cfg())
    assert s["formats"] == list(task.FORMATS) and s["max_drop"] == 1.0 and s["threads"] is None
    assert (s["latency_runs"], s["batch"], s["batches"], s["calibration_images"]) == (30, 16, 3, 300)
    s = task._settings(_cfg(formats=["onnx_int8"], max_accuracy_drop=0, threads=2, throughput_batch=4))
    assert s["formats"] == ["onnx_int8"] and s["max_drop"] == 0.0 and s["threads"] == 2 and s["batch"] == 4
    for cfg, needle in [
        (_cfg(formats=["eager_fp32", "onnx_fp16"]), "unknown format 'onnx_fp16' in formats: choose from eager_fp32"),
        (_cfg(max_accuracy_drop=-1), "max_accuracy_drop is in accuracy points"),
        (_cfg(max_accuracy_drop=True), "max_accuracy_drop is in accuracy points"),
        (_cfg(threads=0), "threads must be an integer of at least 1"),
        (_cfg(throughput_batches=1.5), "throughput_batches must be an integer"),
        (_cfg(calibration_method="best"), "calibration_method"),
    ]:
        with pytest.raises(UserError, match=needle):
            task._settings(cfg)


def test_a_format_this_machine_cannot_run_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(quantize, "has_bf16", lambda: False)
    monkeypatch.setattr(quantize, "cpu_name", lambda: "Test CPU 9000")
    assert task._unavailable("eager_bf16") == "this CPU (Test CPU 9000) has no bf16 instructions: it would be emulated"
    assert task._unavailable("eager_fp32") == task._unavailable("torchscript") == ""
    monkeypatch.setattr(quantize, "has_bf16", lambda: True)
    assert task._unavailable("eager_bf16") == ""

    def missing(fmt):
        raise UserError("format=onnx needs onnxscript, which is not installed")

    monkeypatch.setattr(export, "check_format", missing)
    assert task._unavailable("onnx_int8") == "format=onnx needs onnxscript, which is not installed"


def _row(name, ips, drop, file="f"):
    return {"format": name, "file": file, "images_per_s": ips, "accuracy_drop_points": drop}


def test_the_recommendation_is_the_fastest_format_within_the_allowed_drop():
    rows = [_row("eager_fp32", 10.0, 0), _row("onnx_fp32", 30.0, 0.5), _row("onnx_int8", 90.0, 2.5)]
    assert task.recommend(rows, 1.0) == {
        "format": "onnx_fp32",
        "file": "f",
        "images_per_s": 30.0,
        "accuracy_drop_points": 0.5,
    }
    assert task.recommend(rows, 2.5)["format"] == "onnx_int8"  # the limit itself is within
    assert task.recommend(rows, 0)["format"] == "eager_fp32"
    assert task.recommend([_row("onnx_int8", 90.0, 3)], 1.0) is None
    assert task.recommend([], 1.0) is None
    # A format that does better than fp32 (a negative drop) is within any limit.
    assert task.recommend([_row("eager_fp32", 1.0, 0), _row("onnx_int8", 5.0, -2)], 0)["format"] == "onnx_int8"


def _result(recommended, skipped=None):
    row = {"acc": 0.5, "f1": 0.25, "agreement": 1.0, "p50_ms": 2.04, "p99_ms": 3.96, "file_mb": 36.94}
    return {
        "checkpoint": "/nowhere/best.ckpt",
        "settings": {"batch": 16},
        "formats": [
            {**row, "format": "eager_fp32", "images_per_s": 120.25, "peak_share": 0.456},
            {**row, "format": "onnx_int8", "images_per_s": 300.0, "peak_share": None},
        ],
        "skipped": skipped or {},
        "max_accuracy_drop": 1.5,
        "recommended": recommended,
    }


def test_the_table_has_a_line_per_format_the_skipped_ones_and_the_recommendation():
    best = {"format": "onnx_int8", "images_per_s": 300.0}
    lines = task.table(_result(best, {"eager_bf16": "no bf16 here"})).splitlines()
    assert lines[0].split() == [
        "format",
        "file",
        "MB",
        "acc",
        "F1",
        "agree",
        "p50",
        "ms",
        "p99",
        "ms",
        "img/s@16",
        "peak",
    ]
    assert lines[1].split() == ["eager_fp32", "36.9", "0.5000", "0.2500", "1.000", "2.0", "4.0", "120.2", "46%"]
    assert lines[2].split()[-1] == "-" and lines[2].split()[0] == "onnx_int8"
    assert lines[3] == f"{'eager_bf16':<12} skipped: no bf16 here"
    assert lines[4].startswith("Fastest within 1.5 accuracy point(s) of fp32: onnx_int8 (300.0 images/s at batch 16)")
    assert "serve it with `vggtune serve ckpt=" in lines[4] and "nowhere/best.ckpt backend=auto`" in lines[4]
    assert lines[5].startswith("peak: ")
    lines = task.table(_result(None)).splitlines()
    assert lines[3] == "No format is within 1.5 accuracy point(s) of fp32"


def test_the_exports_report_lines_are_quiet_inside_and_their_levels_come_back():
    loggers = [logging.getLogger(n) for n in ("vggtune.tasks.export", "vggtune.tasks.runs")]
    before = [lg.level for lg in loggers]
    loggers[0].setLevel(logging.DEBUG)
    try:
        with pytest.raises(RuntimeError), task._quiet():
            assert [lg.level for lg in loggers] == [logging.ERROR, logging.ERROR]
            raise RuntimeError("an export that fails")
        assert [lg.level for lg in loggers] == [logging.DEBUG, before[1]]
    finally:
        loggers[0].setLevel(before[0])


def test_a_benchmark_of_the_eager_formats_scores_them_as_sklearn_and_records_the_choice(
    tiny_ckpt, tiny_data, tmp_path, monkeypatch
):
    # A checkpoint of this test's own: the benchmark writes its record beside it (tiny_ckpt has none, and
    # other tests rely on that). Two images of each class.
    ckpt = tmp_path / "ckpt" / "tiny.ckpt"
    ckpt.parent.mkdir()
    os.link(tiny_ckpt, ckpt)
    data = tmp_path / "data"
    for d in sorted(p for p in tiny_data.iterdir() if p.is_dir()):
        (data / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:2]:
            shutil.copy(f, data / d.name / f.name)
    monkeypatch.setattr(quantize, "has_bf16", lambda: False)  # the bf16 row is skipped, whatever this CPU
    probed = []

    def peak(bf16, threads=None):  # the peak probe (~1 s; its own test is in test_benchmark.py): a known peak
        probed.append((bf16, threads))
        return {"gops": {"fp32": 100.0, "int8": 400.0}, "how": {"fp32": "made up"}, "kernels": {}}

    monkeypatch.setattr(benchmark, "peak", peak)
    threads = torch.get_num_threads()
    cfg = _cfg(
        ckpt=str(ckpt),
        data={"root": str(data), "subset": "test"},
        paths={"run_dir": str(tmp_path / "out")},
        formats=["eager_fp32", "eager_bf16"],
        threads=1,
        latency_runs=3,
        throughput_batch=8,  # more than the 6 images: the batch repeats them
        throughput_batches=1,
        max_accuracy_drop=1,
    )
    try:
        assert task.run(cfg) == "eager_fp32"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out"
    result = json.loads((out / "benchmark.json").read_text())
    assert probed == [(False, 1)] and result["peak"]["gops"]["fp32"] == 100.0
    assert list(result["skipped"]) == ["eager_bf16"] and "has no bf16 instructions" in result["skipped"]["eager_bf16"]
    assert result["data"]["images"] == 6 and result["data"]["left_out"] == {}
    assert str(data.resolve()) in result["data"]["source"]

    # The model's own answers on the same images, computed here: normalised input, softmax at the temperature.
    model = load_model(ckpt, "cpu")
    held = heldout.held_out(model, str(data), "test")
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        predicted = model.module((held.images - mean) / std).argmax(1).numpy()
    (row,) = result["formats"]
    assert row["format"] == "eager_fp32" and row["precision"] == "fp32" and row["file"] == str(ckpt)
    assert row["acc"] == pytest.approx(accuracy_score(held.targets, predicted), abs=1e-4)
    assert row["f1"] == pytest.approx(f1_score(held.targets, predicted, average="macro"), abs=1e-4)
    assert row["agreement"] == 1.0 and row["accuracy_drop_points"] == 0
    assert row["file_mb"] == pytest.approx(ckpt.stat().st_size / 1e6, abs=0.06)
    assert row["latency_runs"] == 3 and 0 < row["p50_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
    flops = benchmark.flops_per_image(model.module.model, 32)
    assert result["gflop_per_image"] == pytest.approx(flops / 1e9)
    assert row["gflop_per_s"] == pytest.approx(flops * row["images_per_s"] / 1e9, abs=0.06)
    assert row["peak_share"] == pytest.approx(row["gflop_per_s"] / 100.0, abs=2e-3)
    assert result["recommended"] == {
        "format": "eager_fp32",
        "file": str(ckpt),
        "images_per_s": row["images_per_s"],
        "accuracy_drop_points": 0,
    }
    assert result["settings"]["batch"] == 8 and result["checkpoint"] == str(ckpt.resolve())
    with open(out / "benchmark.csv", newline="") as f:
        (line,) = list(csv.DictReader(f))
    assert list(line) == task.COLUMNS and line["format"] == "eager_fp32" and float(line["acc"]) == row["acc"]
    record = json.loads(benchmark_file(ckpt).read_text())
    assert record["checkpoint_version"] == file_version(ckpt) == result["checkpoint_version"]
    assert record["recommended"] == result["recommended"] and record["run_dir"] == str(out.resolve())
    assert not benchmark_file(tiny_ckpt).exists()
