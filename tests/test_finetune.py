"""Freeze schedules and discriminative learning rates, trained for real with Lightning on tiny data."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from conftest import linear_probe_from_a_weights_file, make_class_folders
from torch import nn

from vggtune.core.errors import UserError
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.model.arch import GROUPS, layer_groups
from vggtune.model.checkpoint import AtomicCheckpointIO
from vggtune.model.finetune import FreezeSchedule, Schedule
from vggtune.model.module import VGGClassifier
from vggtune.tasks.train import _warn_schedule
from vggtune.training.callbacks import EpochSeed

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.01}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("ft") / "d", classes=2, per_class=6)
    return root


def _datamodule(root, arch="vgg11"):
    return ClassFolderDataModule(
        root, val_split=0.2, test_split=0.0, image_size=32, batch_size=4, num_workers=0, arch=arch
    )


def _module(dm, arch="vgg11", optim=SGD, head="vgg", **finetune):
    torch.manual_seed(0)
    return VGGClassifier(
        arch,
        dm.class_names,
        weights="none",
        preprocessing=dm.preprocessing.to_dict(),
        optim=optim,
        finetune=finetune,
        head=head,
    )


class Snapshots(pl.Callback):
    """Copies of the weights and buffers before training and at the end of every epoch, and BN modes seen."""

    def __init__(self):
        self.states, self.bn_training, self.dropout_training = [], [], []

    def on_train_start(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.bn_training.append(
            {name: m.training for name, m in pl_module.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        )
        self.dropout_training.append(
            {name: m.training for name, m in pl_module.model.named_modules() if isinstance(m, nn.Dropout)}
        )

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def _fit(module, dm, epochs, *extra, ckpt_dir=None, ckpt_path=None):
    callbacks = [FreezeSchedule(), EpochSeed(0), *extra]
    if ckpt_dir:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(ckpt_dir),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        deterministic=True,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def _group_keys(module) -> dict[str, list[str]]:
    groups = layer_groups(module.model)
    names = {id(t): k for k, t in module.model.state_dict(keep_vars=True).items()}
    return {g: [names[id(t)] for t in list(m.parameters()) + list(m.buffers())] for g, m in groups.items()}


def _changed(a, b, keys) -> list[bool]:
    return [not torch.equal(a[k], b[k]) for k in keys if a[k].is_floating_point()]


@pytest.mark.slow
@pytest.mark.parametrize("optim", [SGD, ADAMW], ids=["sgd-momentum-wd", "adamw-wd"])
def test_frozen_groups_stay_bit_identical_until_unfrozen(data, optim):
    dm = _datamodule(data)
    module = _module(dm, optim=optim, name="freeze_unfreeze", unfreeze_at_epoch=1, train_fc=True)
    snaps = Snapshots()
    trainer = _fit(module, dm, 2, snaps)
    start, epoch0, epoch1 = snaps.states
    keys = _group_keys(module)
    for group in ("block1", "block2", "block3", "block4", "block5"):
        assert not any(_changed(start, epoch0, keys[group])), f"{group} moved while frozen"
        assert all(_changed(epoch0, epoch1, [k for k in keys[group] if k.endswith("weight")])), group
    for group in ("head", "fc"):
        assert all(_changed(start, epoch0, [k for k in keys[group] if k.endswith("weight")])), group
    # Frozen tensors never reached the optimizer's update: no momentum or Adam state was created for them.
    optimizer = trainer.optimizers[0]
    assert [pg["name"] for pg in optimizer.param_groups] == list(GROUPS)


@pytest.mark.slow
def test_linear_probe_creates_no_optimizer_state_for_the_backbone(data):
    dm = _datamodule(data)
    module = _module(dm, optim=ADAMW, name="linear_probe", train_fc=False)
    snaps = Snapshots()
    trainer = _fit(module, dm, 1, snaps)
    state = trainer.optimizers[0].state
    head = set(map(id, layer_groups(module.model)["head"].parameters()))
    assert {id(p) for p in state if state[p]} == head
    # The frozen fc6/fc7 are a fixed feature extractor: their dropout is off, as at inference.
    assert snaps.dropout_training and not any(any(m.values()) for m in snaps.dropout_training)


@pytest.mark.slow
def test_dropout_of_trained_groups_stays_on(data):
    dm = _datamodule(data)
    snaps = Snapshots()
    _fit(_module(dm, name="freeze_unfreeze", unfreeze_at_epoch=1, train_fc=True), dm, 1, snaps)
    assert all(all(m.values()) for m in snaps.dropout_training)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["linear_probe", "freeze_unfreeze"])
def test_frozen_batchnorm_runs_in_eval_mode_in_every_epoch(data, schedule):
    dm = _datamodule(data, "vgg11_bn")
    module = _module(dm, "vgg11_bn", name=schedule, unfreeze_at_epoch=2, train_fc=True, bn="frozen")
    snaps = Snapshots()
    _fit(module, dm, 2, snaps)
    frozen_bn = [k for g in ("block1", "block5") for k in _group_keys(module)[g] if "running_" in k]
    assert frozen_bn
    for before, after in zip(snaps.states, snaps.states[1:]):  # epoch by epoch, not just the first
        assert not any(_changed(before, after, frozen_bn))
        bn_affine = [
            k
            for g in ("block1", "block5")
            for k in _group_keys(module)[g]
            if k.endswith(("weight", "bias")) and after[k].ndim == 1
        ]
        assert not any(_changed(before, after, bn_affine))
    assert len(snaps.bn_training) >= 4 and not any(any(modes.values()) for modes in snaps.bn_training)


@pytest.mark.slow
def test_bn_train_option_lets_batchnorm_statistics_move(data):
    dm = _datamodule(data, "vgg11_bn")
    module = _module(dm, "vgg11_bn", name="linear_probe", bn="train")
    snaps = Snapshots()
    _fit(module, dm, 1, snaps)
    stats = [k for k in _group_keys(module)["block1"] if "running_mean" in k]
    assert all(_changed(snaps.states[0], snaps.states[1], stats))


@pytest.mark.slow
def test_discriminative_learning_rates_keep_their_ratios_through_the_schedule(data):
    dm = _datamodule(data)
    module = _module(dm, name="freeze_unfreeze", unfreeze_at_epoch=1, lr_decay=0.5)
    lrs = []

    class RecordLR(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lrs.append({pg["name"]: pg["lr"] for pg in trainer.optimizers[0].param_groups})

    _fit(module, dm, 2, RecordLR())
    assert len({round(r["head"], 12) for r in lrs}) > 1, "the scheduler should move the LR"
    for record in lrs:  # every group follows the same schedule, at its own depth's factor
        for depth, name in enumerate(GROUPS):
            assert record[name] == pytest.approx(record["head"] * 0.5**depth)


def test_backbone_lr_ratio_overrides_the_decay():
    s = Schedule(name="full", backbone_lr_ratio=0.1)
    assert s.lr_factor("head") == 1.0 and s.lr_factor("fc") == s.lr_factor("block1") == 0.1


@pytest.mark.slow
def test_resume_after_the_unfreeze_gives_the_same_state_as_an_uninterrupted_run(data, tmp_path):
    def run(epochs_before_stop, ckpt_path=None, ckpt_dir=None):
        dm = _datamodule(data)
        # The pooled head: the schedule is the same, the checkpoints 40 MB instead of 0.5 GB.
        module = _module(dm, optim=ADAMW, head="pooled", name="freeze_unfreeze", unfreeze_at_epoch=1)

        class StopAfter(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch + 1 >= epochs_before_stop:
                    trainer.should_stop = True

        trainer = _fit(module, dm, 3, StopAfter(), ckpt_dir=ckpt_dir, ckpt_path=ckpt_path)
        return module, trainer

    whole, t_whole = run(3)
    run(2, ckpt_dir=tmp_path)  # stopped after epoch 1, past the unfreeze
    resumed, t_resumed = run(3, ckpt_path=tmp_path / "last.ckpt")
    assert t_resumed.current_epoch == t_whole.current_epoch == 3
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in whole.parameters()]
    assert [pg["lr"] for pg in t_resumed.optimizers[0].param_groups] == pytest.approx(
        [pg["lr"] for pg in t_whole.optimizers[0].param_groups]
    )
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "thaw"}, "unknown finetune schedule"),
        ({"unfreeze_at_epoch": -1}, "unfreeze_at_epoch"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"lr_decay": 0}, "lr_decay"),
        ({"bn": "sometimes"}, "finetune.bn"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        Schedule(**kwargs)


def test_unfreezing_after_the_last_epoch_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        _warn_schedule(Schedule(name="freeze_unfreeze", unfreeze_at_epoch=5), max_epochs=3)
    assert "trainer.max_epochs=3" in caplog.text and "stay frozen" in caplog.text


@pytest.mark.parametrize(
    "name, epoch, expected",
    [
        ("linear_probe", 9, ("head",)),
        ("freeze_unfreeze", 0, ("head", "fc")),
        ("freeze_unfreeze", 1, GROUPS),
        ("gradual", 0, ("head",)),
        ("gradual", 3, ("head", "fc")),
        ("gradual", 4, ("head", "fc", "block5")),
        ("full", 0, GROUPS),
    ],
)
def test_which_groups_train_when(name, epoch, expected):
    s = Schedule(name=name, unfreeze_at_epoch=1, every_n_epochs=2, train_fc=name == "freeze_unfreeze")
    assert s.trainable_groups(epoch) == expected


@pytest.mark.slow
def test_random_init_without_a_finetune_choice_trains_every_layer_at_one_lr(tmp_path, tiny_data):
    # model.weights=none with the default schedule (freeze_unfreeze, lr_decay 0.5) would freeze random
    # layers for an epoch and give block1 1/64 of the LR: the run switches to from-scratch settings.
    from conftest import TINY, run_cli_here

    args = [a for a in TINY if not a.startswith(("finetune=", "callbacks.", "trainer.log_every"))]
    run = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *args,
        "test_after_fit=false",
        "callbacks.last_checkpoint=null",
        "logger=null",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / "tensorboard").exists()  # logger=null, as the config groups table in docs/configuration.md says
    assert "model.weights=none: nothing is pretrained, so every layer trains" in (run / "train.log").read_text()
    saved = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)
    finetune = saved["hyper_parameters"]["finetune"]
    assert (finetune["name"], finetune["lr_decay"], finetune["bn"]) == ("full", 1.0, "train")


@pytest.mark.slow
def test_pooled_head_trains_its_new_hidden_layer_even_in_a_linear_probe(tmp_path, tiny_data):
    state, run_dir, proc = linear_probe_from_a_weights_file(tmp_path, tiny_data, "model.head=pooled", "logger=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model.head=pooled: its hidden layer is new" in (run_dir / "train.log").read_text()
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert trained["model.classifier.2.weight"].shape == (512, 1024)
    # the conv layers are the file's, untouched by the probe
    assert all(torch.equal(trained[f"model.{k}"], v) for k, v in state.items() if k.startswith("features."))
    # the hidden layer's BatchNorms ran in training mode (a frozen group's stay in eval mode, stats unmoved)
    for bn, width in (("0", 1024), ("4", 512)):
        assert not torch.equal(trained[f"model.classifier.{bn}.running_mean"], torch.zeros(width))
