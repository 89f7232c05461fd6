"""``vggtune lr_find`` in this process: a short range test on the tiny data (vgg11 at 32 px, 6 steps), what it
writes and suggests, its refusal when there is no suggestion, the epoch-0 groups it trains and the overrides it
hands on to ``vggtune train``. tests/test_lr_find.py runs the command itself (slow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, ProcessState
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from vggtune.core.errors import UserError
from vggtune.model.finetune import layer_groups
from vggtune.tasks import lr_find as task

CONF = Path(__file__).resolve().parents[1] / "conf"
STEPS = 6


def _cfg(tmp_path, tiny_data, *extra):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(
            "lr_find",
            [
                f"data.root={tiny_data}",
                *TINY,
                f"lr_find.num_training={STEPS}",
                "lr_find.min_lr=1e-5",
                "lr_find.max_lr=1e-1",
                "lr_find.early_stop_threshold=null",
                *extra,
            ],
        )
    cfg.paths.run_dir = str(tmp_path / "run")
    return cfg


def test_a_short_range_test_writes_its_sweep_and_suggests_the_steepest_fall_with_epoch_zero_groups(
    tmp_path, tiny_data, monkeypatch, caplog
):
    cfg = _cfg(tmp_path, tiny_data, "finetune=gradual")  # epoch 0: the top groups; each epoch one more
    built = []

    def build_module(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    real_build = task.build_module
    monkeypatch.setattr(task, "build_module", build_module)
    with ProcessState(), caplog.at_level(logging.INFO, logger="vggtune"):
        result = task.lr_find(cfg)
    run = tmp_path / "run"
    assert json.loads((run / "lr_find.json").read_text()) == result
    lrs, losses = result["lr"], result["loss"]
    assert len(lrs) == len(losses) == STEPS and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    # The steepest fall of the loss (numpy's gradient), skipping the first quarter and the last point.
    skip = STEPS // 4
    assert result["suggestion"] == lrs[skip + int(np.argmin(np.gradient(losses[skip:-1])))]
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob("*.ckpt")) and not list(run.glob(".lr_find*"))
    assert f"vggtune train optim.lr={result['suggestion']:.2g}" in caplog.text
    # Every step trained the schedule's epoch-0 groups, though the sweep ran over two epochs of 3 batches.
    (module,) = built
    trainable = {n for n, g in layer_groups(module.model).items() if any(p.requires_grad for p in g.parameters())}
    assert trainable == set(module.schedule.trainable_groups(0)) and not trainable & {"block1", "block5"}


class _NoFall:
    """Lightning's finder when too few steps ran to suggest anything (or the loss only rose)."""

    def __init__(self, lrs):
        self.results = {"lr": lrs, "loss": [1.0] * len(lrs)}

    def suggestion(self, skip_begin=10):
        return None


def test_no_suggestion_is_one_line_saying_what_to_widen_and_nothing_is_written(tmp_path, tiny_data, monkeypatch):
    finders = iter([None, _NoFall([1e-4, 1e-3]), _NoFall([1e-4, 1e-3, 1e-2, 1e-1])])

    class Tuner:
        def __init__(self, trainer):
            pass

        def lr_find(self, *args, **kwargs):
            return next(finders)

    monkeypatch.setattr(task, "Tuner", Tuner)
    for _ in range(3):
        with ProcessState(), pytest.raises(UserError, match="the loss did not fall at any LR tried") as e:
            task.lr_find(_cfg(tmp_path, tiny_data))
        assert "raise lr_find.num_training, or widen lr_find.min_lr / lr_find.max_lr" in str(e.value)
    assert not (tmp_path / "run" / "lr_find.json").exists() and not (tmp_path / "run" / "lr_find.png").exists()


def test_the_train_command_keeps_the_overrides_train_understands():
    assert task._train_overrides() == []  # no Hydra job: nothing to hand on
    overrides = [
        "data.root=/pics",
        "model=vgg11",
        "lr_find.num_training=8",
        "+lr_find.extra=1",
        "optim.lr=0.1",
        "optim.weight_decay=0.01",
        "hydra.run.dir=/tmp/x",
        "~callbacks.early_stopping",
    ]
    with ProcessState():
        with initialize_config_dir(str(CONF), version_base=None):
            cfg = compose("lr_find", overrides[:2] + overrides[5:6], return_hydra_config=True)
        cfg.hydra.overrides.task = overrides
        HydraConfig.instance().set_config(cfg)
        kept = task._train_overrides()
    assert kept == ["data.root=/pics", "model=vgg11", "optim.weight_decay=0.01", "~callbacks.early_stopping"]
