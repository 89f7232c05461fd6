"""Unbalanced classes: data.balance=sampler draws every class equally often (exactly again on resume,
one share per DDP rank), data.balance=loss weighs the training loss, and on a 10:1 task either one
raises the minority class's recall; the run logs the per-class counts and val/bal_acc."""

from __future__ import annotations

import json
from collections import Counter

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import TINY, assert_one_line_error, run_cli_here
from torch.utils.data import TensorDataset

from vggtune.core.errors import UserError
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.datasets import BalancedSampler
from vggtune.data.demo import draw_pattern
from vggtune.model.finetune import FreezeSchedule
from vggtune.model.module import VGGClassifier


def _folders(root, train: dict[str, int], val: dict[str, int]):
    rng = np.random.default_rng(0)
    for subset, counts in (("train", train), ("val", val)):
        for name, n in counts.items():
            (root / subset / name).mkdir(parents=True)
            for i in range(n):
                draw_pattern(name, 36, rng).save(root / subset / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    return _folders(tmp_path_factory.mktemp("unbalanced") / "d", {"checks": 40, "dots": 4}, {"checks": 3, "dots": 3})


def _datamodule(root, **kwargs):
    dm = ClassFolderDataModule(
        str(root), image_size=32, batch_size=4, num_workers=0, arch="vgg11", test_split=0.0, **kwargs
    )
    dm.setup("fit")
    return dm


def test_the_sampler_draws_every_class_about_equally_the_same_way_again_and_one_share_per_rank():
    labels = [0] * 400 + [1] * 40
    data = TensorDataset(torch.zeros(len(labels), 1), torch.tensor(labels))
    sampler = BalancedSampler(data, labels, seed=5)
    sampler.set_epoch(3)
    drawn = list(sampler)
    assert len(drawn) == len(labels)
    share = Counter(labels[i] for i in drawn)[1] / len(drawn)
    assert 0.4 < share < 0.6, share  # 1/11 without balancing
    again = BalancedSampler(data, labels, seed=5)
    again.set_epoch(3)
    assert list(again) == drawn  # (seed, epoch) alone decide: a resumed epoch replays
    again.set_epoch(4)
    assert list(again) != drawn
    ranks = []
    for rank in range(2):
        shard = BalancedSampler(data, labels, num_replicas=2, rank=rank, seed=5)
        shard.set_epoch(3)
        ranks.append(list(shard))
    assert [i for pair in zip(*ranks) for i in pair] == drawn  # the two shares interleave into one draw


def test_the_datamodule_uses_the_sampler_and_gives_inverse_frequency_loss_weights(unbalanced):
    drawn = Counter(int(y) for _, ys in _datamodule(unbalanced, balance="sampler").train_dataloader() for y in ys)
    assert drawn[1] > 10, drawn  # 4 of 44 images, drawn about 22 times
    assert _datamodule(unbalanced).loss_weights() is None
    dm = _datamodule(unbalanced, balance="loss")
    assert dm.loss_weights() == pytest.approx([44 / (2 * 40), 44 / (2 * 4)])
    given = _datamodule(unbalanced, balance="loss", class_weights={"dots": 3.0, "checks": 1.0})
    assert given.loss_weights() == [1.0, 3.0]
    with pytest.raises(UserError, match="one weight per class"):
        _datamodule(unbalanced, balance="loss", class_weights={"dots": 3.0}).loss_weights()
    with pytest.raises(UserError, match="data.class_weights must be 2 positive numbers"):
        _datamodule(unbalanced, balance="loss", class_weights=[1.0, -2.0]).loss_weights()


def _overlapping(n_major: int, n_minor: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fc7-sized vectors whose first value is N(-1, 1) for class 0 and N(+1, 1) for class 1: the
    classes overlap, so where the head puts its boundary depends on how often it sees each class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * n_major + [1] * n_minor)
    x = torch.zeros(len(y), 4096)
    x[:, 0] = torch.randn(len(y), generator=g) + (2.0 * y - 1.0)
    return x, y


def _minority_recall(root, balance: str) -> float:
    """Train the head of a linear probe (the cached-features path: batches of fc7 vectors) on a 10:1
    split through the real datamodule and module, then the recall of the minority class on a balanced val."""
    pl.seed_everything(0)
    dm = _datamodule(root, balance=balance)
    train_x, train_y = _overlapping(400, 40, seed=1)
    val_x, val_y = _overlapping(300, 300, seed=2)
    # what use_cached_features builds, with the labels the split has (the sampler weighs by them)
    dm.split.subsets["train"] = [(f"v{i}", int(label)) for i, label in enumerate(train_y)]
    dm.datasets = {"train": TensorDataset(train_x, train_y), "val": TensorDataset(val_x, val_y)}
    dm.batch_size = 32
    module = VGGClassifier(
        "vgg11",
        dm.class_names,
        weights="none",
        preprocessing=dm.preprocessing.to_dict(),
        finetune={"name": "linear_probe", "train_fc": False},
        class_weights=dm.loss_weights(),
        optim={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.05},
    )
    with torch.no_grad():
        module.model.classifier[6].weight.zero_()
        module.model.classifier[6].bias.zero_()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[FreezeSchedule()],
    )
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        pred = module(val_x).argmax(1)
    return float((pred[val_y == 1] == 1).float().mean())


@pytest.mark.slow
def test_on_a_ten_to_one_task_either_option_raises_the_minority_recall(unbalanced):
    plain = _minority_recall(unbalanced, "none")
    sampler, loss = _minority_recall(unbalanced, "sampler"), _minority_recall(unbalanced, "loss")
    # Without balancing the boundary moves towards the minority (about ln(10)/2 past the middle):
    # recall about 0.44; balanced, about 0.84.
    assert plain < 0.6, plain
    assert sampler > plain + 0.2 and loss > plain + 0.2, (plain, sampler, loss)


@pytest.mark.slow
def test_a_balanced_run_logs_counts_weights_the_loss_and_reports_balanced_accuracy(tmp_path, unbalanced):
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={unbalanced}",
        *TINY,
        "data.balance=loss",
        "monitor=val/bal_acc",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "Training images per class: checks 40, dots 4 (largest / smallest: 10.0)" in log
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert ckpt["hyper_parameters"]["class_weights"] == pytest.approx([44 / 80, 44 / 8])
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {"val/bal_acc", "test/bal_acc"} & set(metrics) == {"val/bal_acc"}  # no test subset here
    assert 0.0 <= metrics["val/bal_acc"] <= 1.0
    del ckpt


def test_an_unknown_balance_mode_is_one_line(tmp_path, unbalanced):
    proc = run_cli_here("train", f"data.root={unbalanced}", *TINY, "data.balance=oversample", cwd=tmp_path)
    assert_one_line_error(proc, "data.balance=oversample", "sampler", "loss")
    assert not (tmp_path / "outputs").exists()
