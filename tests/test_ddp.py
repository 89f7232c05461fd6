"""DDP on the CPU (2 processes, gloo) through the real CLI, across an unfreeze, reading the image cache."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, make_class_folders, run_cli
from test_tensorboard import IMAGES, load_events


@pytest.mark.slow
def test_ddp_cpu_through_an_unfreeze_keeps_replicas_identical_and_writes_one_run(tmp_path):
    # With the image cache: built on local rank 0 (prepare_data), read by both ranks.
    data = make_class_folders(tmp_path / "d", classes=2, per_class=10)
    tiny = [a for a in TINY if not a.startswith(("trainer=", "trainer.max_epochs", "finetune="))]
    proc = run_cli(
        "train",
        f"data.root={data}",
        *tiny,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "data.batch_size=4",
        "data.test_split=0",
        "finetune=freeze_unfreeze",
        "finetune.unfreeze_at_epoch=1",
        "finetune.train_fc=false",
        "data.cache_images=true",
        f"data.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [p for p in (tmp_path / "outputs" / "train").iterdir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert len(list((tmp_path / "cache").glob("images-*.u8"))) == 2  # train and val
    # Rank zero's log: each subset decoded once (rank 1 logs only warnings; that a second process waits
    # and reads instead of decoding is tests/test_image_cache.py's), and not again for the second epoch.
    log = (run / "train.log").read_text()
    assert log.count("Images: decoding and resizing") == 2, log
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # Images and text from rank zero only (once per validation; once), after collectives on both ranks.
    events = load_events(run)
    assert all(len(events.Images(tag)) == len(events.Scalars("val/acc")) == 2 for tag in IMAGES)
    assert len(events.Tensors("data/classes")) == 1
    assert "speed/train_images_per_second" in events.Tags()["scalars"]
    summary = json.loads((run / "metrics.json").read_text())
    # Each rank hashed its own weights after the unfreeze epoch: DDP alone would not have
    # reduced the gradients of the blocks unfrozen after it wrapped the model.
    assert summary["replicas"]["world_size"] == 2
    assert summary["replicas"]["identical"], summary["replicas"]
    assert "Epoch 1: training head, fc, block5" in proc.stdout + proc.stderr
