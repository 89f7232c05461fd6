"""The Python API (vggtune.train, vggtune.load and the Model's methods), run for real on tiny settings.

Expected values come from the command line on the same files (``vggtune predict``'s CSV), from the
checkpoint's model run by hand, or from scikit-learn on the same predictions; never from an earlier run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, copy_run, make_class_folders, run_cli_here
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import vggtune
from vggtune.api_hydra import hydra_value, to_overrides
from vggtune.api_inputs import images_of
from vggtune.config_errors import compose_task
from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb
from vggtune.data.transforms import unit_transform
from vggtune.use.export import onnx_session_runner


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    """The UserError's message: one line, raised without the chain of frames inside the task."""
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    e = excinfo.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), repr(e.__context__)
    return message


def hydra_is_clear() -> bool:
    return not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


# --- keyword arguments as overrides (no training) -------------------------------------------------


def test_keywords_become_the_overrides_the_command_line_would_take():
    got = to_overrides(
        ["trainer.max_epochs=2"],
        {
            "model": "vgg11",
            "data__batch_size": 8,
            "trainer": {"accelerator": "cpu", "devices": 1},
            "optim.lr": 3e-4,
            "data.flip": False,
            "logger": None,
            "data.exclude": ["a b.jpg", "c.jpg"],
            "data.root": Path("/data/my flowers"),
        },
    )
    assert got == [
        "trainer.max_epochs=2",
        "model=vgg11",
        "data.batch_size=8",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "optim.lr=0.0003",
        "data.flip=false",
        "logger=null",
        "data.exclude=[a b.jpg,c.jpg]",
        "data.root=/data/my flowers",
    ]
    cfg = compose_task("train", [o for o in got if not o.startswith("logger")])
    assert (cfg.model.arch, cfg.data.batch_size, cfg.trainer.max_epochs, cfg.optim.lr) == ("vgg11", 8, 2, 3e-4)
    assert cfg.data.flip is False and list(cfg.data.exclude) == ["a b.jpg", "c.jpg"]
    assert cfg.data.root == "/data/my flowers"


@pytest.mark.parametrize(
    "text",
    ["it's", "3e-4", "true", "null", "a=b", "x,y", "[1]", " lead", "C:\\a b\\", "q\\'x", "end\\", "é", "", "${seed}"],
)
def test_a_string_value_reads_back_as_the_same_string(text):
    [override] = OverridesParser.create().parse_overrides([f"k={hydra_value(text)}"])
    assert override.value() == text


def test_home_in_a_value_is_expanded_as_the_shell_would(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert to_overrides((), {"data.root": "~/flowers"}) == [f"data.root={tmp_path / 'flowers'}"]


@pytest.mark.parametrize(
    ("overrides", "options", "needle"),
    [
        (["--cfg"], {}, "command-line flag"),
        ([3], {}, "give overrides as strings"),
        ([], {"data.root": object()}, "data.root: a object cannot be a config value"),
        ([], {"trainer": {}}, "trainer={}"),
    ],
)
def test_what_is_not_an_override_is_refused_in_one_line(overrides, options, needle):
    with pytest.raises(UserError) as e:
        to_overrides(overrides, options)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- bad input: the command line's one line, and Hydra left clear (no training) ------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"optim__lrr": 0.1}, "unknown config key 'optim.lrr': did you mean optim.lr?"),
        ({"model": "vgg17"}, "unknown model 'vgg17'"),
        ({"trainer": {"max_epochs": "two"}}, "trainer.max_epochs must be a whole number"),
    ],
)
def test_bad_overrides_give_the_command_lines_one_line(kwargs, needle, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        vggtune.train(tiny_data, **kwargs)
    assert needle in one_line(e)
    assert hydra_is_clear() and not any(tmp_path.iterdir())  # no run folder made


def test_a_missing_data_folder_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        vggtune.train(tmp_path / "nowhere", "model=vgg11")
    assert f"data.root {tmp_path / 'nowhere'} does not exist" in one_line(e)
    assert hydra_is_clear()


def test_a_missing_checkpoint_gives_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        vggtune.load(tmp_path / "best.ckpt")
    assert f"ckpt {tmp_path / 'best.ckpt'} does not exist" in one_line(e)
    with pytest.raises(UserError) as e:
        vggtune.load(tmp_path)  # a folder without checkpoints/best.ckpt
    assert "best.ckpt does not exist" in one_line(e)


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        (torch.zeros(1, 8, 8), "got shape (1, 8, 8)"),
        (torch.full((3, 8, 8), 2.0), "values in [0, 1]"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "got torch.int32"),
        ([], "empty list"),
        (42, "cannot read a int"),
        ("/nowhere/at/all", "input /nowhere/at/all does not exist"),
    ],
)
def test_what_predict_cannot_read_is_refused_in_one_line(inputs, needle):
    with pytest.raises(UserError) as e:
        images_of(inputs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_predict_takes_paths_folders_pil_images_and_tensors_one_image_each(tiny_data):
    files = sorted((tiny_data / "checks").glob("*.png"))[:2]
    items = images_of([files[0], str(tiny_data / "hstripes"), Image.new("RGB", (9, 9)), torch.zeros(2, 3, 9, 9)])
    assert items[0] == files[0] and len(items) == 1 + 10 + 1 + 2
    assert all(isinstance(i, Path) for i in items[1:11]) and isinstance(items[11], Image.Image)
    assert [tuple(t.shape) for t in items[12:]] == [(3, 9, 9), (3, 9, 9)]


# --- a trained model: predict, evaluate, export, explain (the session's tiny run) -----------------


@pytest.fixture(scope="module")
def model(tiny_run):
    return vggtune.load(tiny_run, device="cpu")  # the run folder: its checkpoints/best.ckpt


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def same_rows(api_rows: list[dict], csv_rows: list[dict]) -> None:
    """The API's rows are the CSV's: the same cells, probabilities to the CSV's 6 decimals."""
    assert len(api_rows) == len(csv_rows)
    for got, want in zip(api_rows, csv_rows):
        assert list(got) == list(want)
        for key, value in want.items():
            if key.startswith("probability_") and value:
                assert got[key] == pytest.approx(float(value), abs=5e-7), key
            else:
                assert ("" if got[key] is None else str(got[key])) == value, key


@pytest.mark.slow
def test_predict_gives_the_rows_of_vggtune_predict_for_a_folder_with_an_unreadable_file(model, tiny_data, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_data / "checks", folder)
    (folder / "notes.txt").write_text("not an image")
    proc = run_cli_here(
        "predict",
        f"ckpt={model.path}",
        f"input={folder}",
        "output=p.csv",
        "device=cpu",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = read_csv(tmp_path / "p.csv")
    rows = model.predict(folder, as_frame=False)
    same_rows(rows, expected)
    assert rows[-1]["path"].endswith("notes.txt") and "not an image file name" in rows[-1]["error"]
    frame = model.predict(folder)  # pandas is installed here: a DataFrame of the same rows
    assert list(frame.columns) == list(expected[0]) and frame.to_dict("records")[0] == rows[0]


@pytest.mark.slow
def test_pil_images_and_tensors_are_classified_as_their_files_are(model, tmp_path):
    # Images already at the model's resize size: resizing them is a no-op for a PIL image and a tensor alike,
    # so the two routes see the very same pixels.
    size = model.loaded.preprocessing.resize_size
    root = make_class_folders(tmp_path / "shapes", classes=3, per_class=1, size=size, seed=5)
    files = sorted(p for p in root.rglob("*.*"))
    by_file = model.predict(files, as_frame=False)
    opened = [Image.open(f) for f in files]
    same_rows(model.predict(opened, as_frame=False), [{k: str(v) for k, v in r.items()} for r in by_file])
    tensors = torch.stack([torch.from_numpy(np.array(load_rgb(f))).permute(2, 0, 1) for f in files])
    for batch in (tensors, tensors.float() / 255, list(tensors)):
        got = model.predict(batch, as_frame=False)
        assert [r["path"] for r in got] == [None] * len(files)
        for g, want in zip(got, by_file):
            assert [g[f"class_{i}"] for i in (1, 2, 3)] == [want[f"class_{i}"] for i in (1, 2, 3)]
            assert [g[f"probability_{i}"] for i in (1, 2, 3)] == pytest.approx(
                [want[f"probability_{i}"] for i in (1, 2, 3)], abs=1e-6
            )


@pytest.mark.slow
def test_evaluate_gives_scikit_learns_metrics_of_the_same_predictions(model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = model.evaluate(tiny_data)
    rows = model.predict(tiny_data, top_k=1, as_frame=False)
    truth = [Path(r["path"]).parent.name for r in rows]
    predicted = [r["class_1"] for r in rows]
    assert result.metrics["acc"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    assert result.metrics["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    assert result.metrics["bal_acc"] == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-6)
    assert result.folder.parent == tmp_path / "outputs" / "eval"  # the run folder vggtune eval makes
    assert {"metrics.json", "per_class.csv", "misclassified.csv", "confusion_matrix.png"} <= {
        p.name for p in result.folder.iterdir()
    }
    # The same images named by a CSV file of paths and labels: the same metrics.
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{r['path']},{t}\n" for r, t in zip(rows, truth)))
    assert model.evaluate(labels).metrics == pytest.approx(result.metrics)
    assert hydra_is_clear()


@pytest.mark.slow
def test_evaluate_refuses_a_missing_folder_in_one_line(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        model.evaluate(tmp_path / "nowhere")
    assert f"data.root {tmp_path / 'nowhere'} does not exist" in one_line(e)
    assert not (tmp_path / "outputs").exists()  # the refused run's folder is not left behind


@pytest.mark.slow
def test_export_writes_an_onnx_file_that_gives_the_models_probabilities(model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = model.export("exported/model.onnx")
    assert out == tmp_path / "exported" / "model.onnx" and Path(f"{out}.json").is_file()
    files = sorted(tiny_data.rglob("*.png"))[:4]
    prepare = unit_transform(model.loaded.preprocessing)
    probs = onnx_session_runner(out)(torch.stack([prepare(load_rgb(f)) for f in files]))
    rows = model.predict(files, top_k=len(model.classes), as_frame=False)
    for row, p in zip(rows, probs):
        by_class = {row[f"class_{i}"]: row[f"probability_{i}"] for i in range(1, len(model.classes) + 1)}
        assert [by_class[c] for c in model.classes] == pytest.approx(p.tolist(), abs=1e-4)


@pytest.mark.slow
def test_explain_returns_the_heatmaps_of_the_top_classes_for_a_file_and_a_pil_image(
    model, tiny_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    file = sorted((tiny_data / "vstripes").glob("*.png"))[0]
    explained = model.explain(file, top_k=2)
    top = model.predict(file, as_frame=False)[0]
    assert explained.classes == [top["class_1"], top["class_2"]]
    assert explained.heatmaps.shape == (2, *Image.open(file).size[::-1])
    assert 0 <= explained.heatmaps.min() and explained.heatmaps.max() <= 1 and explained.heatmaps.max() > 0
    assert all(p.is_file() for p in explained.overlays) and (explained.folder / "feature_maps.png").is_file()
    assert len(explained.figure().axes) == 2
    again = model.explain(Image.open(file), top_k=2)  # saved to a scratch PNG first: the same pixels
    assert again.folder != explained.folder and again.classes == explained.classes
    np.testing.assert_allclose(again.heatmaps, explained.heatmaps, atol=1e-3)
    with pytest.raises(UserError) as e:
        model.explain(tiny_data)
    assert "takes one image" in one_line(e)


# --- training from Python, twice in one process --------------------------------------------------


def tiny_keywords() -> dict:
    """TINY (tests/conftest.py) as keyword arguments, the way a notebook would write them."""
    options = {}
    for item in TINY:
        key, value = item.split("=", 1)
        options[key] = yaml.safe_load(value)  # "32" -> 32, "false" -> False; "none" and "cpu" stay strings
    return options


@pytest.mark.slow
def test_train_twice_in_one_process_with_keywords_then_strings(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    first = vggtune.train(tiny_data, **tiny_keywords())
    assert hydra_is_clear() and root.handlers == handlers and root.level == level and Path.cwd() == tmp_path
    with pytest.raises(UserError):  # a refused call in between leaves nothing behind either
        vggtune.train(tiny_data, *TINY, "optim.lrr=1")
    second = vggtune.train(str(tiny_data), *TINY, "data.batch_size=4", **{"seed": 7})
    assert hydra_is_clear() and root.handlers == handlers

    assert first.folder != second.folder and first.folder.parent == tmp_path / "outputs" / "train"
    for run, batch, seed in ((first, 8, 42), (second, 4, 7)):
        cfg = OmegaConf.load(run.folder / ".hydra" / "config.yaml")
        assert (cfg.data.batch_size, cfg.seed, cfg.model.arch, cfg.trainer.max_epochs) == (batch, seed, "vgg11", 1)
        assert run.best_checkpoint.is_file() and run.best_checkpoint.parent == run.folder / "checkpoints"
        saved = json.loads((run.folder / "metrics.json").read_text())
        assert run.metrics == saved["metrics"] and "val/acc" in run.metrics and "test/acc" in run.metrics
        assert f"Run folder: outputs/train/{run.folder.name}" in (run.folder / "train.log").read_text()
    assert second.folder.name not in (first.folder / "train.log").read_text()  # its log file was closed

    loaded = second.load("cpu")
    assert loaded.path == second.best_checkpoint and loaded.classes == ["checks", "hstripes", "vstripes"]
    for run in (first, second):
        for ckpt in (run.folder / "checkpoints").glob("*.ckpt"):
            os.remove(ckpt)


# --- docs/python-api.md: its code blocks run, in order, as one notebook session -------------------

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def page_blocks() -> list[str]:
    """The page's python code blocks, in order."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.S | re.M)
    return [code for lang, code in blocks if lang == "python"]


def test_the_page_trains_and_predicts_in_five_lines():
    first = page_blocks()[0]
    lines = [line for line in first.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 5 and "vggtune.train(" in first and ".predict(" in first, first


@pytest.mark.slow
def test_the_pages_code_runs_as_written(tmp_path, monkeypatch, capsys):
    """Placeholders as tests/test_readme.py has them: ``~`` is a home folder made here, with the folders
    the page names; every ``vggtune.train`` call gets TINY's settings after the page's own (they win),
    since the page's model and epochs would fine-tune ImageNet weights, which no test downloads."""
    home = tmp_path / "home"
    make_class_folders(home / "pictures" / "flowers", classes=3, per_class=6)
    make_class_folders(home / "pictures" / "new_labelled_batch", classes=3, per_class=2, seed=1)
    unsorted = home / "pictures" / "unsorted"
    for i, image in enumerate(
        sorted(make_class_folders(tmp_path / "more", classes=2, per_class=2, seed=2).rglob("*.*"))
    ):
        unsorted.mkdir(exist_ok=True)
        shutil.copy(image, unsorted / f"{i}_{image.name}")
    shutil.copy(sorted((home / "pictures" / "flowers").rglob("*.jpg"))[0], home / "pictures" / "rose_01.jpg")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    real_train = vggtune.api.train

    def tiny_train(data=None, /, *overrides, **options):
        return real_train(data, *overrides, *to_overrides((), options), *TINY, "data.batch_size=4")

    monkeypatch.setattr(vggtune.api, "train", tiny_train)
    session: dict = {}
    for block in page_blocks():
        exec(compile(block, str(PAGE), "exec"), session)

    assert "unknown config key 'optim.lrr': did you mean optim.lr?" in capsys.readouterr().out
    run, predictions = session["run"], session["predictions"]
    assert run.best_checkpoint.is_file() and session["run_2"].folder != run.folder
    assert len(predictions) == 4 and set(predictions["error"]) == {""}
    assert set(predictions["class_1"]) <= set(session["model"].classes)
    assert 0 <= session["result"].metrics["acc"] <= 1
    assert session["onnx_file"] == tmp_path / "flowers.onnx" and session["onnx_file"].stat().st_size > 0
    assert session["explained"].heatmaps.shape[0] == 2
    for ckpt in (tmp_path / "outputs").rglob("*.ckpt"):
        ckpt.unlink()


def test_train_on_a_finished_run_returns_that_run_and_says_how_to_train_on(tmp_path, tiny_run, caplog):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with caplog.at_level(logging.WARNING, logger="vggtune.api"):
        run = vggtune.train(resume=str(run_dir))
    assert run.folder == run_dir.resolve() and run.summary == json.loads((run_dir / "metrics.json").read_text())
    assert f"raise trainer.max_epochs: vggtune train resume={run_dir} trainer.max_epochs=2" in caplog.text
    assert {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    assert hydra_is_clear()
