"""``vggtune export quantize=int8|bf16``: the smaller file, how it was calibrated, and its check beside fp32 on
held-out images, recomputed here from the files themselves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import assert_one_line_error, run_cli_here

from vggtune.use import export, heldout, quantize
from vggtune.use.inference import load_model


def _split(run: Path, subset: str) -> set[str]:
    with open(run / "split.csv", newline="") as f:
        return {row["path"] for row in csv.DictReader(f) if row["subset"] == subset}


def _val_images(run: Path):
    model = load_model(run / "checkpoints" / "best.ckpt", "cpu")
    return model, heldout.held_out(model, None, "val")


@pytest.mark.slow
def test_int8_export_is_calibrated_on_train_images_and_judged_on_val_beside_fp32(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    fp32 = tmp_path / "fp32.onnx"
    assert (
        run_cli_here(
            "export", f"ckpt={ckpt}", f"output={fp32}", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path
        ).returncode
        == 0
    )
    out = tmp_path / "model.int8.onnx"
    proc = run_cli_here(
        "export",
        f"ckpt={ckpt}",
        "quantize=int8",
        "calibration_images=12",
        "force=true",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'b'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(Path(f"{out}.json").read_text())
    q = info["quantized"]

    graph = onnx.load(str(out)).graph  # QDQ: quantize/dequantize pairs, int8 weights, a float softmax at the end
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and ops[-1] == "Softmax"
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert out.stat().st_size < 0.3 * fp32.stat().st_size

    train, val = _split(tiny_run, "train"), _split(tiny_run, "val")
    files = {str(Path(p).relative_to(Path(p).parents[1])) for p in q["calibration_files"]}
    assert len(files) == q["calibration_images"] == 12 and files <= train and not files & val

    model, held = _val_images(tiny_run)  # the check, recomputed from the two files on the run's val images
    before = heldout.probabilities(export.onnx_session_runner(fp32), held.images)
    after = heldout.probabilities(export.onnx_session_runner(out), held.images)
    agreement = float((before.argmax(1) == after.argmax(1)).float().mean())
    assert q["check"]["images"] == len(val) and q["check"]["agreement"] == pytest.approx(agreement)
    targets = torch.tensor(held.targets)
    acc = float((after.argmax(1) == targets).float().mean())
    assert q["check"]["quantized"]["acc"] == pytest.approx(acc)
    assert q["check"]["accuracy_drop_points"] == pytest.approx(
        100 * (float((before.argmax(1) == targets).float().mean()) - acc), abs=1e-3
    )
    torch.testing.assert_close(after.sum(dim=1), torch.ones(len(after)), atol=1e-5, rtol=0)
    assert q["reduce_range"] == (not quantize.has_vnni()) and q["weights"] == "int8, per channel"
    assert "answers as fp32 on" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_a_quantized_file_that_loses_too_much_is_refused_in_one_line_and_kept(tiny_run, tmp_path, monkeypatch):
    real = heldout.compare

    def lossy(reference, candidate, data, names, thresholds):
        """As if fp32 were right on every image and the int8 file wrong on every one (a tiny random model's
        own drop is anything): the refusal is what is tested."""
        truth = torch.tensor(data.targets)
        right = torch.nn.functional.one_hot(truth, len(names)).float()
        return real(right, right.roll(1, dims=1), data, names, thresholds)

    monkeypatch.setattr(heldout, "compare", lossy)
    out = tmp_path / "m.int8.onnx"
    proc = run_cli_here(
        "export",
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "quantize=int8",
        "calibration_images=4",
        "max_accuracy_drop=0.5",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(
        proc, "loses 100.00 accuracy points", "max_accuracy_drop=0.5", "force=true", "kept for inspection"
    )
    info = json.loads(Path(f"{out}.json").read_text())
    assert out.is_file() and info["quantized"]["within_tolerance"] is False
    forced = run_cli_here(
        "export",
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "quantize=int8",
        "calibration_images=4",
        "max_accuracy_drop=0.5",
        "force=true",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert forced.returncode == 0, forced.stderr[-2000:]
    q = json.loads(Path(f"{out}.json").read_text())["quantized"]
    assert q["within_tolerance"] is True and q["forced"] is True


@pytest.mark.slow
@pytest.mark.skipif(not quantize.has_bf16(), reason="this CPU has no bf16 instructions")
@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_bf16_torchscript_holds_bf16_weights_and_is_judged_beside_fp32(tiny_run, tmp_path):
    out = tmp_path / "m.bf16.pt"
    proc = run_cli_here(
        "export",
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "format=torchscript",
        "quantize=bf16",
        "force=true",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = json.loads(Path(f"{out}.json").read_text())["quantized"]
    module = torch.jit.load(str(out))
    assert {p.dtype for p in module.net.parameters()} == {torch.bfloat16}
    model, held = _val_images(tiny_run)
    with torch.inference_mode():
        after = module(held.images)
        before = export.ExportedClassifier(
            model.module.model, model.preprocessing, temperature=model.temperature
        ).eval()(held.images)
    assert after.dtype == torch.float32
    assert q["check"]["agreement"] == pytest.approx(float((before.argmax(1) == after.argmax(1)).float().mean()))
    assert q["check"]["max_abs_diff"] == pytest.approx(float((before - after).abs().max()), abs=1e-4)


def test_bf16_on_a_cpu_without_it_is_one_line(monkeypatch, tmp_path, tiny_ckpt):
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    proc = run_cli_here(
        "export",
        f"ckpt={tiny_ckpt}",
        "format=torchscript",
        "quantize=bf16",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "quantize=bf16 needs a CPU with bf16", "format=onnx quantize=int8")


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["quantize=int4"], ["quantize must be one of none, int8, bf16"]),
        (["quantize=int8", "format=torchscript"], ["quantize=int8 writes an ONNX file", "format=onnx"]),
        (["quantize=bf16"], ["quantize=bf16 is for format=torchscript", "quantize=int8"]),
        (["quantize=int8", "calibration_method=kl"], ["calibration_method must be one of minmax, entropy"]),
        (["quantize=int8", "max_accuracy_drop=-1"], ["max_accuracy_drop", "0 or more"]),
        (["quantize=int8", "calibration_root=/no/such/folder"], ["calibration_root=/no/such/folder is not a folder"]),
        (["quantize=int8", "calibration_images=0"], ["calibration_images"]),
    ],
)
def test_bad_quantize_settings_are_one_line(tiny_ckpt, tmp_path, overrides, needles):
    proc = run_cli_here(
        "export",
        f"ckpt={tiny_ckpt}",
        *overrides,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, *needles)
    assert not list(tmp_path.glob("**/*.onnx"))
