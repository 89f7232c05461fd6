"""Faults: SIGKILL and resume, a kill during a checkpoint save, Ctrl-C and SIGTERM, a diverging loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY, make_class_folders, run_cli, run_cli_here, vggtune_command

from vggtune.core.errors import UserError
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.model.checkpoint import AtomicCheckpointIO
from vggtune.model.module import VGGClassifier
from vggtune.training.faults import StopOnNonFiniteLoss

# Two epochs of three steps each: the kill lands in the second.
RUN = [a for a in TINY if not a.startswith(("trainer.max_epochs", "data.batch_size"))] + [
    "trainer.max_epochs=2",
    "data.batch_size=4",
    "trainer.deterministic=true",
    "data.test_split=0",
    "optim.lr=0.001",
]


@pytest.fixture(scope="session")  # once per worker, whichever tests of this file it runs in which order
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("faults") / "d", classes=2, per_class=8)


def _start(cwd, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*vggtune_command(), "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, timeout=300.0, every=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="session")  # once per worker, whichever tests of this file it runs in which order
def pretrained(tmp_path_factory) -> str:
    """A vgg11_bn state dict in torchvision's layout, standing in for the ImageNet file."""
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "vgg11_bn.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11_bn().state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")  # once per worker, whichever tests of this file it runs in which order
def recipe(data, pretrained) -> list[str]:
    """The default recipe, not a test-friendly one: a BatchNorm VGG from a weights file, the default
    freeze_unfreeze schedule (epoch 1 unfreezes everything), AdamW, loader worker processes
    (data.num_workers=auto) and data.augment=light, whose per-image seeds must resume too. Six
    steps an epoch, each reported on its own line (the interruptions wait for them)."""
    assert ClassFolderDataModule(data).num_workers > 0  # auto: loader processes
    return [
        f"data.root={data}",
        "model=vgg11_bn",
        f"model.weights={pretrained}",
        "data.image_size=32",
        "data.augment=light",
        "data.batch_size=2",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "data.test_split=0",
        "seed=7",
        "callbacks.best_checkpoint=null",
        "logger.images_every_n_epochs=0",  # only last.ckpt is written
        "callbacks.progress_bar.mode=plain",
        "callbacks.progress_bar.every_n_steps=1",
    ]


@pytest.fixture(scope="session")  # once per worker, whichever tests of this file it runs in which order
def uninterrupted(tmp_path_factory, recipe) -> Path:
    """The run that every interrupted and resumed one must equal, the same seed (this process; the
    interrupted runs are processes of their own)."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = run_cli_here("train", *recipe, f"hydra.run.dir={whole}", cwd=whole.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return whole


def _assert_same_run(resumed: Path, whole: Path) -> None:
    resumed_metrics = json.loads((resumed / "metrics.json").read_text())["metrics"]
    assert resumed_metrics == json.loads((whole / "metrics.json").read_text())["metrics"]
    assert "train/acc" in resumed_metrics and "train/loss" in resumed_metrics
    a, b = _weights(whole / "checkpoints" / "last.ckpt"), _weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_sigkill_then_resume_on_the_default_recipe_equals_an_uninterrupted_run(tmp_path, recipe, uninterrupted):
    # logged under vggtune's own logger name, not Lightning's
    assert (
        "[vggtune.model.finetune][INFO] Epoch 1: training head, fc, block5, block4, block3, block2, block1 "
        in (uninterrupted / "train.log").read_text()
    )
    killed = tmp_path / "killed"
    child = _start(tmp_path, *recipe, f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    _wait_for(last.exists)  # epoch 0 is saved: the kill lands before epoch 1's save
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    assert torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] == 0

    proc = run_cli_here("train", f"resume={killed}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(killed, uninterrupted)
    assert len(list((killed / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # the same TensorBoard run


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_readable(tmp_path, data):
    run = tmp_path / "run"
    child = _start(tmp_path, f"data.root={data}", *RUN, f"hydra.run.dir={run}")
    ckpts = run / "checkpoints"
    _wait_for(lambda: (ckpts / "last.ckpt").exists())
    _wait_for(lambda: any(ckpts.glob(".last.ckpt.*.tmp")), every=0.001)  # the next save has begun
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert any(ckpts.glob(".last.ckpt.*.tmp")), "the kill should have landed inside the save"
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, recipe, uninterrupted, sig):
    # As a terminal sends Ctrl-C and SLURM pre-empts a job: to every process of the group, the
    # loader workers too. The signal lands part-way through epoch 1, where everything unfreezes.
    run = tmp_path / "run"
    child = subprocess.Popen(
        [*vggtune_command(), "train", *recipe, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.startswith("epoch 2/2 step 2/"):
            os.killpg(child.pid, sig)
            break
    out = "".join(seen) + child.communicate(timeout=300)[0]
    assert child.returncode == 128 + sig, out[-3000:]
    assert f"resume={run}" in out
    assert "GPU available" not in out and "to estimate number of stepping batches" not in out  # Lightning's chatter
    log = (run / "train.log").read_text()  # one line each, under vggtune's logger, no empty line before
    assert f"[vggtune.training.faults][WARNING] Interrupted by {sig.name} at epoch 1, step " in log
    assert f"[vggtune.training.faults][WARNING] Resume with: vggtune train resume={run}\n" in log
    assert "][INFO] \n" not in log and "][WARNING] \n" not in log
    saved = torch.load(run / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=True)
    done = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert saved["epoch"] == 1 and 2 <= done < 6, done  # part-way through the epoch

    proc = run_cli("train", f"resume={run}", cwd=tmp_path)  # a fresh process: every warning shows
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("not resumable", "weights_only"):  # Lightning's warnings that were not the user's to act on
        assert noise not in proc.stdout + proc.stderr
    assert "Restoring states from the checkpoint path at" in proc.stdout + proc.stderr  # its useful lines stay
    resumed_steps = [line for line in proc.stdout.splitlines() if line.startswith("epoch 2/2 step ")]
    assert resumed_steps[0].startswith(f"epoch 2/2 step {done + 1}/6 ")  # goes on where it stopped
    _assert_same_run(run, uninterrupted)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()  # spent once the run went past it


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data):
    dm = ClassFolderDataModule(
        data, val_split=0.2, test_split=0.0, image_size=32, batch_size=4, num_workers=0, arch="vgg11"
    )
    module = VGGClassifier(
        "vgg11",
        dm.class_names,
        weights="none",
        preprocessing=dm.preprocessing.to_dict(),
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
        finetune={"name": "full"},
    )

    class BlowUpInEpoch1(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                for group in trainer.optimizers[0].param_groups:
                    group["lr"] = 1e30

    last = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", enable_version_counter=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        callbacks=[BlowUpInEpoch1(), StopOnNonFiniteLoss(check_every_n_steps=1), last],
    )
    with pytest.raises(UserError, match=r"became (nan|inf).* at epoch 1, batch \d+ .*last good checkpoint"):
        trainer.fit(module, datamodule=dm)
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
