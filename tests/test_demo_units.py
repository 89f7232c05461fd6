"""The offline demo's steps in this process: the pretrained file it makes, and the run from random init it
compares with. tests/test_demo.py runs the whole `vggtune train experiment=demo` (slow)."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from vggtune.core.errors import UserError
from vggtune.model.finetune import FROM_SCRATCH
from vggtune.tasks import demo
from vggtune.training.demo_weights import demo_weights, fit_plain

TINY_PRETRAIN = {"per_class": 2, "epochs": 1, "batch_size": 4}


def _demo_cfg(*overrides: str):
    with initialize_config_module("vggtune.conf", version_base="1.3"):
        return compose("train", overrides=["experiment=demo", "paths.run_dir=/runs/demo", *overrides])


def test_prepare_pretrains_the_conv_layers_the_demo_config_names_once(tmp_path, caplog):
    path = tmp_path / "pretrained" / "vgg11-letters.pth"
    caplog.set_level(logging.INFO, logger="vggtune")
    demo.prepare(
        _demo_cfg("model=vgg11", f"model.weights={path}", "demo.pretrain.per_class=2", "demo.pretrain.epochs=1")
    )
    state = torch.load(path, weights_only=True)
    convs = make_layers(cfgs["A"]).state_dict()  # vgg11's conv layers, without its 120M-parameter classifier
    assert {k: v.shape for k, v in state.items()} == {f"features.{k}": v.shape for k, v in convs.items()}
    assert "pretraining epoch 1/1: train acc" in caplog.text
    assert len(list((tmp_path / "pretrained" / "letters-a").iterdir())) == 5  # the generated classes
    made = path.stat().st_mtime_ns
    demo_weights(path, "vgg11", 32, seed=0, **TINY_PRETRAIN)
    assert path.stat().st_mtime_ns == made and "using the pretrained conv layers" in caplog.text


def test_the_plain_loop_trains_and_reports_each_epochs_accuracy():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()  # separable by one weight
    net = nn.Linear(2, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    seen = []
    fit_plain(net, torch.optim.SGD(net.parameters(), lr=0.5), loader, 5, lambda epoch, acc: seen.append((epoch, acc)))
    assert [e for e, _ in seen] == [0, 1, 2, 3, 4]
    assert seen[-1][1] > 0.9 and seen[-1][1] >= seen[0][1]
    assert float((net(x).argmax(1) == y).float().mean()) > 0.9


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"epochs": 0}, "demo.pretrain.epochs"), ({"family": "runes"}, "demo.pretrain.family=runes is not a demo family")],
)
def test_bad_pretrain_settings_name_the_key(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        demo_weights(tmp_path / "w.pth", "vgg11", 32, **{**TINY_PRETRAIN, **kwargs})
    assert not (tmp_path / "w.pth").exists()


def test_the_comparison_run_is_the_same_network_from_random_init_without_checkpoints():
    cfg = _demo_cfg()
    scratch = demo.scratch_config(cfg)
    assert scratch.model.weights == "none" and scratch.model.arch == cfg.model.arch
    assert scratch.paths.run_dir == "/runs/demo/from_scratch"
    assert {k: scratch.finetune[k] for k in FROM_SCRATCH} == FROM_SCRATCH
    assert scratch.callbacks.best_checkpoint is None and scratch.callbacks.last_checkpoint is None
    assert scratch.test_after_fit is False and scratch.ckpt_path is None
    assert (scratch.data, scratch.trainer.max_epochs, scratch.seed) == (cfg.data, cfg.trainer.max_epochs, cfg.seed)
    assert demo.is_baseline(scratch) and not demo.is_baseline(cfg)
    assert cfg.model.weights != "none" and cfg.callbacks.best_checkpoint is not None  # the run itself is untouched
    assert demo.scratch_config(_demo_cfg("demo.compare_from_scratch=false")) is None
    assert demo.scratch_config(_demo_cfg("+resume=/runs/demo")) is None


def test_the_report_puts_both_runs_in_one_line(caplog):
    caplog.set_level(logging.INFO, logger="vggtune")
    demo.report({"metrics": {"val/acc": 0.8}}, {"metrics": {"val/acc": 0.4}}, "val/acc", "/runs/demo")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Demo:")]
    assert "val/acc 0.800 fine-tuned from the pretrained conv layers, 0.400 from random init" in line
    assert "from_scratch/" in line and "\n" not in line
