"""`vggtune eval`, `predict` and `export` on a tiny checkpoint, and checkpoints that load safely.

Every expected value is computed here by running the checkpoint's model directly on the same
image files (and by scikit-learn for the metrics), never copied from an earlier run.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folders, run_cli_here
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score
from torchvision.transforms import v2

from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb
from vggtune.use import export
from vggtune.use.evaluation import compute_metrics, images_from_folder
from vggtune.use.inference import load_model

FAST = ["device=cpu"]


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt) -> Path:
    """An untrained checkpoint (conftest): every expected value is the model's own output."""
    return tiny_ckpt


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, "cpu")


def direct_probs(model, paths) -> torch.Tensor:
    """The model run by hand, one stacked batch, with the preprocessing and the temperature the checkpoint
    records (test_calibration.py checks the temperature's part)."""
    x = torch.stack([model.transform(load_rgb(p)) for p in paths])
    with torch.inference_mode():
        return (model.module(x) / model.temperature).softmax(dim=1)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def copy_into(folder: Path, files) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder / src.name)) for src in files]


def corrupt_copy(src: Path, dst: Path) -> Path:
    """The first 300 bytes of an image: a name and header that look right, a body that cannot be decoded."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:300])
    return dst


# --- eval ---------------------------------------------------------------------------------------


def test_eval_on_the_runs_test_split_writes_every_file_and_agrees_with_the_model(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"  # eval finds the run's split beside its checkpoint
    model = load_model(ckpt, "cpu")
    run_dir = tmp_path / "ev"
    proc = run_cli_here("eval", f"ckpt={ckpt}", "data.num_workers=0", *FAST, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.png", "confusion_matrix.csv", "misclassified.csv"):
        assert (run_dir / name).is_file(), name
    with Image.open(run_dir / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) >= 200

    root = Path(json.loads((tiny_run / "metrics.json").read_text())["data"]["root"])
    rows = [r for r in read_csv(tiny_run / "split.csv") if r["subset"] == "test"]
    paths = [root / r["path"] for r in rows]
    truth = np.array([model.class_names.index(r["class"]) for r in rows])
    predicted = direct_probs(model, paths).argmax(dim=1).numpy()

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["data"]["images"] == len(rows) > 0
    assert summary["metrics"]["acc"] == pytest.approx((predicted == truth).mean(), abs=1e-6)
    assert summary["metrics"]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    assert "acc_top5" not in summary["metrics"]  # three classes: top-5 would always be 1
    n = len(model.class_names)
    lines = (run_dir / "confusion_matrix.csv").read_text().splitlines()
    matrix = [[int(c) for c in r[1:]] for r in csv.reader(lines[1:])]
    assert matrix == confusion_matrix(truth, predicted, labels=range(n)).tolist()
    wrong = {(str(p), model.class_names[t], model.class_names[q]) for p, t, q in zip(paths, truth, predicted) if t != q}
    assert {(r["path"], r["true"], r["predicted"]) for r in read_csv(run_dir / "misclassified.csv")} == wrong
    assert [r["class"] for r in read_csv(run_dir / "per_class.csv")] == model.class_names
    assert "accuracy" in proc.stdout + proc.stderr and "precision" in proc.stdout + proc.stderr


def test_eval_on_a_folder_leaves_out_and_reports_unknown_classes_and_unreadable_files(tiny_data, ckpt, model, tmp_path):
    known, missing = model.class_names[0], model.class_names[1]
    root = tmp_path / "new_batch"
    for name in (known, model.class_names[2]):
        shutil.copytree(tiny_data / name, root / name)
    copy_into(root / "zebras", sorted((tiny_data / missing).iterdir())[:2])
    broken = corrupt_copy(next((tiny_data / known).glob("*.jpg")), root / known / "broken.jpg")

    run_dir = tmp_path / "ev"
    proc = run_cli_here(
        "eval",
        f"ckpt={ckpt}",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=7",
        *FAST,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "class folders the model does not know: zebras (2 images)" in out

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["data"]["unknown_classes"] == {"zebras": 2}
    assert list(summary["data"]["unreadable"]) == [str(broken)]
    good = sorted(p for p in root.rglob("*.*") if p.parent.name != "zebras" and p != broken)
    truth = np.array([model.class_names.index(p.parent.name) for p in good])
    confidence, predicted = direct_probs(model, good).max(dim=1)
    predicted = predicted.numpy()
    assert summary["data"]["images"] == len(good) == 20
    assert summary["metrics"]["acc"] == pytest.approx((predicted == truth).mean(), abs=1e-6)
    mistakes = {r["path"]: r for r in read_csv(run_dir / "misclassified.csv")}
    assert set(mistakes) == {str(p) for p, t, q in zip(good, truth, predicted) if t != q}
    for p, c in zip(good, confidence.tolist()):
        if str(p) in mistakes:
            assert float(mistakes[str(p)]["confidence"]) == pytest.approx(c, abs=1e-4)
    absent = next(r for r in summary["per_class"] if r["class"] == missing)
    assert absent["images"] == 0 and absent["recall"] is None  # no images: undefined, not 0


def test_eval_of_a_folder_without_any_class_the_model_knows_is_refused_with_close_names(tmp_path):
    make_class_folders(tmp_path / "other", classes=2, per_class=2)
    for d in (tmp_path / "other").iterdir():
        d.rename(d.with_name(d.name.upper()))
    with pytest.raises(UserError, match="none of the class folders") as e:
        images_from_folder(tmp_path / "other", ["checks", "dots", "hstripes"])
    assert "CHECKS -> checks" in str(e.value) and "\n" not in str(e.value)


def test_metrics_match_scikit_learn_and_top5_appears_with_six_or_more_classes():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 6, generator=generator)
    logits[:, 5] -= 100  # class 5 is never predicted: its precision is undefined
    targets = torch.randint(0, 6, (60,), generator=generator)
    targets[targets == 4] = 0  # class 4 has no images: its recall is undefined
    names = [f"c{i}" for i in range(6)]
    result = compute_metrics(logits.softmax(dim=1), targets, names)

    truth, pred = targets.numpy(), logits.argmax(dim=1).numpy()
    top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(dim=1).float().mean()
    assert result.metrics["acc_top5"] == pytest.approx(float(top5))
    assert result.metrics["acc"] == pytest.approx((pred == truth).mean())
    assert result.metrics["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    precision = precision_score(truth, pred, labels=range(6), average=None, zero_division=0)
    recall = recall_score(truth, pred, labels=range(6), average=None, zero_division=0)
    for i, row in enumerate(result.per_class):
        assert row["precision"] is None if i == 5 else row["precision"] == pytest.approx(precision[i])
        assert row["recall"] is None if i == 4 else row["recall"] == pytest.approx(recall[i])
    assert result.confusion.tolist() == confusion_matrix(truth, pred, labels=range(6)).tolist()


# --- predict ------------------------------------------------------------------------------------


def test_predict_folder_lists_every_file_with_top_k_or_the_reason(tiny_data, ckpt, model, tmp_path):
    folder = tmp_path / "unsorted"
    images = copy_into(folder / "deep", [sorted((tiny_data / c).iterdir())[0] for c in model.class_names])
    broken = corrupt_copy(images[0], folder / "broken.jpg")
    (folder / "notes.txt").write_text("not a picture")
    (folder / "gone.jpg").symlink_to(folder / "moved_away.jpg")  # a broken link still gets its row

    run_dir = tmp_path / "pred"
    proc = run_cli_here(
        "predict",
        f"ckpt={ckpt}",
        f"input={folder}",
        "output=preds.csv",
        "top_k=2",
        "batch_size=2",
        "num_workers=0",
        *FAST,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["path"]: r for r in read_csv(tmp_path / "preds.csv")}  # relative output: the current folder
    assert (run_dir / "predictions.csv").read_bytes() == (tmp_path / "preds.csv").read_bytes()
    assert set(rows) == {str(p) for p in images} | {str(broken), str(folder / "notes.txt"), str(folder / "gone.jpg")}
    assert "not a readable image" in rows[str(broken)]["error"] and rows[str(broken)]["class_1"] == ""
    assert "No such file" in rows[str(folder / "gone.jpg")]["error"]
    assert "not an image file name" in rows[str(folder / "notes.txt")]["error"]

    probs = direct_probs(model, images)
    top = probs.topk(2, dim=1)
    for i, path in enumerate(images):
        row = rows[str(path)]
        assert row["error"] == ""
        for k in range(2):
            assert row[f"class_{k + 1}"] == model.class_names[top.indices[i, k]]
            assert float(row[f"probability_{k + 1}"]) == pytest.approx(float(top.values[i, k]), abs=1e-5)


def test_a_checkpoint_of_a_torch_compiled_model_still_loads(tiny_data, ckpt, model, tmp_path):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v for k, v in state["state_dict"].items()}
    assert all("._orig_mod." in k for k in state["state_dict"])
    torch.save(state, tmp_path / "compiled.ckpt")
    del state

    compiled = load_model(tmp_path / "compiled.ckpt", "cpu")
    images = sorted(tiny_data.rglob("*.*"))[:4]
    torch.testing.assert_close(direct_probs(compiled, images), direct_probs(model, images), rtol=0, atol=0)


# --- export -------------------------------------------------------------------------------------


def _raw_batch(info: dict, paths) -> torch.Tensor:
    """Images prepared as the exported file's JSON says: resize, centre crop, [0, 1], no normalisation."""
    prepare = v2.Compose(
        [
            v2.Resize(info["resize_size"], antialias=True),
            v2.CenterCrop(info["image_size"]),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    return torch.stack([prepare(load_rgb(p)) for p in paths])


def _model_outputs(model, paths, logits: bool) -> torch.Tensor:
    with torch.inference_mode():
        out = model.module(torch.stack([model.transform(load_rgb(p)) for p in paths]))
    return out if logits else (out / model.temperature).softmax(dim=1)


def _check_sidecar(info: dict, model, logits: bool) -> None:
    assert info["class_names"] == model.class_names and info["output"] == ("logits" if logits else "probabilities")
    assert info["image_size"] == model.preprocessing.image_size and info["mean"] == list(model.preprocessing.mean)
    assert info["check"]["max_abs_diff"] <= info["check"]["tolerance"]


def test_onnx_export_gives_the_models_probabilities_for_images_prepared_as_its_json_says(
    tiny_data, ckpt, model, tmp_path
):
    out = tmp_path / "exported" / "classifier.onnx"
    proc = run_cli_here(
        "export", f"ckpt={ckpt}", "format=onnx", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(Path(f"{out}.json").read_text())
    _check_sidecar(info, model, logits=False)
    assert json.loads((tmp_path / "run" / "export.json").read_text()) == info

    import onnxruntime

    paths = sorted(tiny_data.rglob("*.*"))[:5]  # 5 images: not the batch size the export traced with
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {info["input_name"]: _raw_batch(info, paths).numpy()})[0])
    torch.testing.assert_close(got, _model_outputs(model, paths, logits=False), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_torchscript_export_with_logits_gives_the_models_logits(tiny_data, ckpt, model, tmp_path):
    # The task function in this process (the ONNX test above goes through the command line).
    from vggtune.tasks.export import export_checkpoint

    out = tmp_path / "classifier.pt"
    cfg = OmegaConf.create(
        {
            "ckpt": str(ckpt),
            "format": "torchscript",
            "output": str(out),
            "logits": True,
            "paths": {"run_dir": str(tmp_path / "run")},
        }
    )
    info = export_checkpoint(cfg)
    assert json.loads(Path(f"{out}.json").read_text()) == info
    _check_sidecar(info, model, logits=True)

    paths = sorted(tiny_data.rglob("*.*"))[-3:]
    got = torch.jit.load(str(out))(_raw_batch(info, paths)).detach()
    torch.testing.assert_close(got, _model_outputs(model, paths, logits=True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_export_to_onnx_without_the_extra_says_how_to_install(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import <package>` fail as if it were not installed
    with pytest.raises(UserError) as e:
        export.check_format("onnx")
    for needle in (package, "pip install 'vggtune[export]'", "format=torchscript"):
        assert needle in str(e.value)
    assert export.check_format("torchscript") == "torchscript"
