"""Each bad input to `vggtune train` gets one clear line, exit status 2, and leaves outputs/ alone."""

from __future__ import annotations

import socket

import pytest
import torch
import torchvision
from conftest import TINY, assert_one_line_error, copy_run, make_class_folders, run_cli, run_cli_here


@pytest.fixture()
def work(tmp_path):
    """A working folder whose outputs/ already holds an earlier run that must survive."""
    old = tmp_path / "outputs" / "train" / "earlier"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"metrics": {}}')
    return tmp_path


def _outputs(work):
    return sorted(p.relative_to(work).as_posix() for p in (work / "outputs").rglob("*"))


def _train(work, *args, env=None, run=run_cli_here):
    before = _outputs(work)
    proc = run("train", *TINY, *args, cwd=work, env=env)
    assert _outputs(work) == before, "a refused run must not leave or change anything in outputs/"
    return proc


def test_missing_data_root(work):
    assert_one_line_error(_train(work, run=run_cli), "data.root", "experiment=demo")


def test_data_root_does_not_exist(work):
    # Through the installed command: the error raised inside the task is one line there too.
    assert_one_line_error(_train(work, f"data.root={work / 'nope'}", run=run_cli), "does not exist")


def test_data_root_is_a_file(work):
    (work / "f.txt").write_text("x")
    assert_one_line_error(_train(work, f"data.root={work / 'f.txt'}"), "is a file")


def test_no_class_folders(work):
    (work / "flat").mkdir()
    (work / "flat" / "a.jpg").write_bytes(b"")
    assert_one_line_error(_train(work, f"data.root={work / 'flat'}"), "no class folders")


def test_single_class(work):
    make_class_folders(work / "one", classes=1)
    assert_one_line_error(_train(work, f"data.root={work / 'one'}"), "single class", "at least two")


def test_class_folder_without_images(work):
    root = make_class_folders(work / "d", classes=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    assert_one_line_error(_train(work, f"data.root={root}"), "empty", "no usable images")


def test_too_few_images_to_split(work):
    root = make_class_folders(work / "d", classes=2, per_class=2)
    assert_one_line_error(_train(work, f"data.root={root}"), "too few to split")


def test_unknown_model_lists_valid_ones(work, tiny_data):
    err = assert_one_line_error(_train(work, f"data.root={tiny_data}", "model=vgg17"), "unknown model 'vgg17'")
    for arch in ("vgg11", "vgg16_bn", "vgg19"):
        assert arch in err


def test_unknown_key_suggests_the_right_one(work, tiny_data):
    assert_one_line_error(_train(work, f"data.root={tiny_data}", "data.batch_sise=4"), "did you mean data.batch_size")


def test_wrong_type(work, tiny_data):
    assert_one_line_error(
        _train(work, f"data.root={tiny_data}", "trainer.max_epochs=many"), "trainer.max_epochs", "whole number"
    )


def test_weights_file_missing(work, tiny_data):
    assert_one_line_error(_train(work, f"data.root={tiny_data}", f"model.weights={work / 'no.pth'}"), "does not exist")


def test_weights_file_of_another_architecture(work, tiny_data):
    path = work / "vgg13.pth"
    torch.save(torchvision.models.vgg13().state_dict(), path)
    assert_one_line_error(
        _train(work, f"data.root={tiny_data}", f"model.weights={path}"), "do not fit vgg11", "model=vgg13"
    )


def test_weights_file_that_is_not_a_checkpoint(work, tiny_data):
    path = work / "junk.pth"
    path.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(_train(work, f"data.root={tiny_data}", f"model.weights={path}"), "not a PyTorch weights file")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imagenet_weights_unavailable_offline_stops_with_the_ways_out(work, tiny_data):
    # A proxy on a closed loopback port makes the download fail at once, without touching the network.
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {
        "TORCH_HOME": str(work / "torch"),
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    err = assert_one_line_error(
        _train(work, f"data.root={tiny_data}", "model.weights=imagenet", env=env),
        "vgg11-8a719046.pth",
        "model.weights=none",
        "model.weights=/path/to/",
    )
    assert str(work / "torch" / "hub" / "checkpoints") in err


@pytest.mark.parametrize(
    "override, needles",
    [
        ("trainer.max_epochs=-1", ("trainer.max_epochs", "1 or more")),
        ("trainer.max_epochs=null", ("trainer.max_epochs", "1 or more")),
        ("trainer.max_epochs=0", ("trainer.max_epochs", "1 or more")),
        ("optim.lr=-1", ("optim.lr", "positive")),
        ("monitor=val/accuracy", ("did you mean monitor=val/acc?", "val/loss")),
        ("scheduler.warmup_fraction=2", ("scheduler.warmup_fraction", "below 1")),
        ("callbacks.progress_bar.mode=fancy", ("callbacks.progress_bar.mode=fancy", "auto", "plain")),
        ("callbacks.progress_bar.every_n_steps=0", ("callbacks.progress_bar.every_n_steps", "1 or more")),
        ("callbacks.progress_bar.refresh_seconds=-1", ("callbacks.progress_bar.refresh_seconds", "0 or more")),
        ("monitor=val/acc_top5", ("needs at least 6 classes", "has 3")),  # found once the data is read
    ],
)
def test_values_that_would_fail_after_training_started_are_refused_first(work, tiny_data, override, needles):
    assert_one_line_error(_train(work, f"data.root={tiny_data}", override), *needles)


# --- resuming ---------------------------------------------------------------------------------------


def _foreign_checkpoint(path):
    torch.save({"state_dict": {}, "epoch": 3}, path)
    return path


def _text_file(path):
    path.write_text("not a checkpoint")
    return path


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda run, tmp: tmp / "missing.ckpt", ("does not exist", "last.ckpt")),
        (lambda run, tmp: _text_file(tmp / "notes.ckpt"), ("not a PyTorch checkpoint",)),
        (lambda run, tmp: _foreign_checkpoint(tmp / "other.ckpt"), ("not a vggtune checkpoint",)),
        (lambda run, tmp: run / "checkpoints" / "best.ckpt", ("weights only", "last.ckpt")),
    ],
)
def test_a_checkpoint_that_cannot_be_resumed_is_refused_in_one_line(work, tiny_data, tiny_run, make, needles):
    ckpt = make(tiny_run, work)
    assert_one_line_error(_train(work, f"data.root={tiny_data}", f"ckpt_path={ckpt}"), *needles)


def _hydra_files(run_dir):
    return {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path, tiny_run, tiny_data):
    run = copy_run(tiny_run, tmp_path / "run")
    before = _hydra_files(run)
    other = make_class_folders(tmp_path / "other", classes=4)  # the data has changed: a fourth class

    # Another model: refused before Hydra starts the job.
    proc = run_cli_here("train", f"resume={run}", "model=vgg13", cwd=tmp_path)
    assert_one_line_error(proc, "trained as vgg11", "model=vgg13")
    # Other classes: found inside the job, after Hydra rewrote .hydra/, which is put back. (One more epoch:
    # the run is complete at trainer.max_epochs=1, which is said before any data is read.)
    proc = run_cli_here("train", f"resume={run}", f"data.root={other}", "trainer.max_epochs=2", cwd=tmp_path)
    assert_one_line_error(proc, "trained on the classes", "leave data.root out")

    assert _hydra_files(run) == before, "a refused resume must not become part of the run's saved overrides"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in tiny_run.iterdir())


def test_unknown_head_lists_valid_ones(work, tiny_data):
    assert_one_line_error(
        _train(work, f"data.root={tiny_data}", "model.head=mlp"), "model.head must be one of vgg, pooled"
    )


def test_bad_crop_scale_names_the_key(work, tiny_data):
    assert_one_line_error(_train(work, f"data.root={tiny_data}", "data.crop_scale=0"), "data.crop_scale")
