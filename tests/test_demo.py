"""`vggtune train experiment=demo`: pretrain a stand-in for ImageNet weights once, fine-tune, compare with random init.

Shrunk to seconds here (a few images, one epoch each): what is checked is what the demo does and
says, not its accuracy, which bench/demo.py measures at full size.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import run_cli_here

from vggtune.training.demo_weights import demo_weights

SMALL = [
    "demo.pretrain.per_class=6",
    "demo.pretrain.epochs=1",
    "data.per_class=8",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "data.num_workers=0",
    "logger.images_every_n_epochs=0",
]


@pytest.mark.slow
def test_the_demo_pretrains_once_fine_tunes_and_compares_with_random_init(tmp_path):
    proc = run_cli_here("train", "experiment=demo", *SMALL, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "WARNING" not in out  # the run from random init is on purpose: no warning about it

    weights = tmp_path / "data" / "demo" / "pretrained" / "vgg11_bn-letters-a-32px.pth"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert state and all(k.startswith("features.") for k in state)  # the conv layers, what the pooled head uses
    assert sorted(p.name for p in (weights.parent / "letters-a").iterdir()) == list("KLMNO")  # kept beside it
    assert sorted(p.name for p in (tmp_path / "data" / "demo" / "letters").iterdir()) == list("ABCDE")

    run = tmp_path / "run"
    pretrained = json.loads((run / "metrics.json").read_text())
    scratch = json.loads((run / "from_scratch" / "metrics.json").read_text())
    ckpt = torch.load(pretrained["last_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["weights"] == "data/demo/pretrained/vgg11_bn-letters-a-32px.pth"
    assert ckpt["hyper_parameters"]["finetune"]["name"] == "freeze_unfreeze"  # frozen, then unfrozen
    assert not (run / "from_scratch" / "checkpoints").exists()
    assert list((run / "from_scratch" / "tensorboard").rglob("events.out.tfevents.*"))  # beside the fine-tune
    log = (run / "train.log").read_text()
    assert "Demo: pretraining vgg11_bn's conv layers on 30 generated images of K, L, M, N, O" in log
    assert "model.weights=none: nothing is pretrained" not in log and "Epoch 0: training head, fc, block5" in log
    line = re.search(r"Demo: val/acc (\S+) fine-tuned from the pretrained conv layers, (\S+) from random init", log)
    assert line, log[-2000:]
    assert float(line[1]) == round(pretrained["metrics"]["val/acc"], 3)
    assert float(line[2]) == round(scratch["metrics"]["val/acc"], 3)
    assert proc.stdout.rstrip().endswith(f"tensorboard --logdir {run.relative_to(tmp_path)}")  # the last thing said
    # The demo has no test split: the suggested eval names the subset that exists, and works as printed.
    suggested = re.search(r"next: +vggtune (eval .*data\.subset=val)", out)
    assert suggested, out[-2000:]
    assert run_cli_here(*suggested[1].split(), "device=cpu", "hydra.run.dir=ev", cwd=tmp_path).returncode == 0

    made = weights.stat().st_mtime_ns  # a second run takes the file as it is
    assert demo_weights(weights, per_class=6, epochs=1) == weights and weights.stat().st_mtime_ns == made
