"""`vggtune train` end to end through the installed command, on tiny generated class folders."""

from __future__ import annotations

import csv
import json
import runpy

import pytest
import torch
from conftest import (
    TINY,
    assert_one_line_error,
    copy_run,
    linear_probe_from_a_weights_file,
    run_cli,
    run_cli_here,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vggtune import __version__


def test_run_folder_has_every_promised_file(tiny_run):
    for name in (
        "metrics.json",
        "split.csv",
        "train.log",
        ".hydra/config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (tiny_run / name).is_file(), name


def test_best_checkpoint_loads_weights_only_and_carries_what_inference_needs(tiny_run, tiny_data):
    ckpt = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["class_names"] == sorted(p.name for p in tiny_data.iterdir())
    assert hp["arch"] == "vgg11"
    assert hp["preprocessing"]["image_size"] == 32
    assert len(hp["preprocessing"]["mean"]) == 3 and len(hp["preprocessing"]["std"]) == 3
    assert ckpt["state_dict"]["model.classifier.6.weight"].shape == (3, 512)  # the default pooled head's last layer
    assert ckpt["vggtune"]["format"] == 1


def test_metrics_json_has_final_metrics_and_paths(tiny_run):
    summary = json.loads((tiny_run / "metrics.json").read_text())
    metrics = summary["metrics"]
    for key in ("val/acc", "val/f1", "val/loss", "val/acc_best", "train/loss", "test/acc"):
        assert key in metrics, key
        assert metrics[key] == metrics[key]  # not NaN
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert summary["best_checkpoint"].endswith("checkpoints/best.ckpt")
    assert summary["class_names"] == ["checks", "hstripes", "vstripes"]


def test_split_file_lists_every_image_once(tiny_run, tiny_data):
    with open(tiny_run / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    on_disk = sorted(p.relative_to(tiny_data).as_posix() for p in tiny_data.rglob("*.*"))
    assert sorted(paths) == on_disk
    assert {r["subset"] for r in rows} == {"train", "val", "test"}


def test_tensorboard_event_file_has_the_loss(tiny_run):
    acc = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/loss_epoch" in tags, tags
    assert "val/acc" in tags and "lr/head" in tags


def test_runs_never_overwrite_an_existing_run(tiny_run, tmp_path, tiny_data):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file()}
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        "model=vgg11",
        "model.weights=none",
        f"hydra.run.dir={tiny_run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "already holds files" in proc.stderr
    after = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert all(before[p] == t for p, t in after.items())


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli_here("train", "--cfg", "job", "model=vgg19", "optim.lr=3e-4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "arch: vgg19" in proc.stdout and "lr: 0.0003" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_a_tilde_in_path_valued_keys_means_the_home_folder(tmp_path):
    # The shell does not expand ~ after key=, and Hydra's override grammar refuses it.
    home = tmp_path / "home"
    (home / "pictures").mkdir(parents=True)
    proc = run_cli_here(
        "train",
        "--cfg",
        "job",
        "data.root=~/pictures/flowers",
        "model.weights=~/w/vgg16.pth",
        "+data.labels=~/labels.csv",
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr
    for line in (f"root: {home}/pictures/flowers", f"weights: {home}/w/vgg16.pth", f"labels: {home}/labels.csv"):
        assert line in proc.stdout
    missing = run_cli_here("eval", "ckpt=~/runs/best.ckpt", cwd=tmp_path, env={"HOME": str(home)})
    assert_one_line_error(missing, str(home / "runs" / "best.ckpt"))
    training = run_cli_here("train", "data.root=~/pictures", cwd=tmp_path, env={"HOME": str(home)})
    assert_one_line_error(training, str(home / "pictures"))  # found and read: it holds no class folders


def test_python_dash_m_is_the_command(monkeypatch, capsys):
    # ``python -m vggtune`` runs vggtune/__main__.py as __main__: the same entry point as the console script
    monkeypatch.setattr("sys.argv", ["vggtune", "--version"])
    runpy.run_module("vggtune", run_name="__main__", alter_sys=False)
    assert capsys.readouterr().out.strip() == f"vggtune {__version__}"
    monkeypatch.setattr("sys.argv", ["vggtune", "--help"])
    runpy.run_module("vggtune", run_name="__main__", alter_sys=False)
    usage = capsys.readouterr().out
    assert "train" in usage and "audit" in usage


@pytest.mark.slow
def test_help_lists_tasks(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "train" in proc.stdout


@pytest.mark.slow
def test_training_from_a_local_weights_file_starts_from_its_tensors(tmp_path, tiny_data):
    # model.head=vgg: every tensor but the last layer comes from the file (the pooled head takes the convs only,
    # tests/test_finetune.py)
    state, run_dir, proc = linear_probe_from_a_weights_file(tmp_path, tiny_data, "model.head=vgg")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # With a linear probe the backbone never changes, so the checkpoint shows what was loaded.
    for key, value in state.items():
        if not key.startswith("classifier.6."):
            assert torch.equal(trained[f"model.{key}"], value), key
    assert not torch.equal(trained["model.classifier.6.weight"], state["classifier.6.weight"][:3])


def _files(run_dir):
    return {p.relative_to(run_dir): p.stat().st_mtime_ns for p in run_dir.rglob("*")}


def test_resuming_a_finished_run_says_it_is_complete_and_how_to_train_on(tmp_path, tiny_run, tiny_data):
    run = copy_run(tiny_run, tmp_path / "run")
    before = _files(run)
    proc = run_cli_here("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # nothing to do is not a failure (a requeued job is done)
    assert "error" not in proc.stderr and "validation" not in proc.stdout + proc.stderr
    assert f"The run in {run} is complete at epoch 1 of 1 (trainer.max_epochs=1)" in proc.stdout
    assert f"To train on, raise trainer.max_epochs: vggtune train resume={run} trainer.max_epochs=2" in proc.stdout
    assert _files(run) == before  # not even .hydra/ rewritten

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, f"ckpt_path={ckpt}", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"The run in {ckpt} is complete at epoch 1 of 1" in proc.stdout
    assert "the same command with trainer.max_epochs=2" in proc.stdout
    assert not any(elsewhere.iterdir())  # no new run folder for a run that trains nothing


def test_train_called_on_a_finished_run_returns_its_metrics_and_writes_nothing(tmp_path, tiny_run, tiny_data):
    from vggtune.config_errors import compose_task
    from vggtune.tasks.train import train

    run = copy_run(tiny_run, tmp_path / "run")
    before = _files(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_task("train", [f"data.root={tiny_data}", *TINY, f"ckpt_path={ckpt}", f"paths.run_dir={run}"])
    assert train(cfg) == json.loads((run / "metrics.json").read_text())  # what a sweep or the Python API reads
    assert _files(run) == before


@pytest.mark.slow
def test_the_suggested_command_trains_a_finished_run_on(tmp_path, tiny_run):
    run = copy_run(tiny_run, tmp_path / "run")
    said = run_cli_here("train", f"resume={run}", cwd=tmp_path).stdout
    command = said.split("raise trainer.max_epochs: ")[1].split()
    assert command[:2] == ["vggtune", "train"]
    proc = run_cli_here(*command[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_a_data_set_smaller_than_the_batch_trains_on_one_batch_of_it(tmp_path, tiny_data):
    run = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("data.batch_size")]
    proc = run_cli_here(
        "train", f"data.root={tiny_data}", *tiny, "data.batch_size=64", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = sum(json.loads((run / "metrics.json").read_text())["data"]["counts"]["train"].values())
    said = f"data.batch_size=64 is more than the {n} training images: training on batches of {n}, one per epoch"
    assert (run / "train.log").read_text().count(said) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1  # one optimizer step: the epoch was one batch
