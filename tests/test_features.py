"""Cached backbone features: the same training as computing them every step, and a cache that is never stale."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli_here

from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.feature_cache import cache_key, weights_identity
from vggtune.model.arch import frozen_trunk
from vggtune.model.finetune import FreezeSchedule
from vggtune.model.module import VGGClassifier
from vggtune.training.callbacks import EpochSeed

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("feat") / "d", classes=3, per_class=6)


def _train(data, cache_dir, train_fc, epochs=2):
    dm = ClassFolderDataModule(
        data,
        val_split=0.2,
        test_split=0.0,
        image_size=32,
        batch_size=4,
        num_workers=0,
        augment="none",
        arch="vgg11",
        cache_features=cache_dir is not None,
        cache_dir=str(cache_dir),
    )
    torch.manual_seed(0)
    module = VGGClassifier(
        "vgg11",
        dm.class_names,
        weights="none",
        preprocessing=dm.preprocessing.to_dict(),
        optim=SGD,
        finetune={"name": "linear_probe", "train_fc": train_fc},
    )
    if cache_dir is not None:
        dm.use_cached_features(module.model, train_fc, weights_identity("none", 0), torch.device("cpu"))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[FreezeSchedule(), EpochSeed(0)],
    )
    trainer.fit(module, datamodule=dm)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.slow
@pytest.mark.parametrize("train_fc", [False, True], ids=["head-only", "fc6-fc7-and-head"])
def test_training_from_cached_features_matches_computing_them_every_step(data, tmp_path, train_fc):
    plain, plain_metrics = _train(data, None, train_fc)
    cached, cached_metrics = _train(data, tmp_path, train_fc)
    trained = "classifier." if train_fc else "classifier.6."
    for key, value in plain.model.state_dict().items():
        if key.startswith(trained):
            assert torch.allclose(cached.model.state_dict()[key], value, atol=1e-5), key
    assert cached_metrics["val/acc"] == pytest.approx(plain_metrics["val/acc"])
    assert cached_metrics["val/loss"] == pytest.approx(plain_metrics["val/loss"], abs=1e-4)


def test_the_trunk_and_the_rest_make_the_whole_model(data):
    model = VGGClassifier("vgg11", ["a", "b"], weights="none").model.eval()
    x = torch.randn(3, 3, 32, 32)
    for train_fc in (False, True):
        trunk, rest = frozen_trunk(model, train_fc)
        assert torch.allclose(rest(trunk(x)), model(x), atol=1e-6)


def _cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.glob("features-*.pt"))


@pytest.mark.slow
def test_the_cache_is_reused_and_invalidated_when_an_input_changes(tmp_path, caplog):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=5)
    cache = tmp_path / "cache"

    def prepare(image_size=32, arch="vgg11"):
        dm = ClassFolderDataModule(
            data,
            val_split=0.2,
            test_split=0.0,
            image_size=image_size,
            batch_size=2,
            num_workers=0,
            augment="none",
            arch=arch,
            cache_features=True,
            cache_dir=str(cache),
        )
        model = VGGClassifier(arch, dm.class_names, weights="none").model
        with caplog.at_level(logging.INFO, logger="vggtune.data.feature_cache"):
            caplog.clear()
            dm.use_cached_features(model, False, weights_identity("none", 0), torch.device("cpu"))
        return "read from the cache" in caplog.text

    assert not prepare() and len(_cache_files(cache)) == 1
    assert prepare(), "the same inputs read the cache"
    assert not prepare(image_size=40), "another image size is another cache"
    assert not prepare(arch="vgg13"), "another architecture is another cache"
    (data / "checks" / "img_000.png").write_bytes((data / "checks" / "img_001.jpg").read_bytes())
    assert not prepare(), "a changed file is another cache"
    assert len(_cache_files(cache)) == 4
    assert weights_identity("none", 0) != weights_identity("none", 1) != weights_identity("imagenet", 0)


def test_cached_features_need_a_backbone_frozen_for_the_whole_run(tmp_path, tiny_data):
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "data.cache_features=true",
        f"data.cache_dir={tmp_path / 'c'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "finetune=linear_probe")


def test_the_pooled_heads_cache_is_another_file_than_the_vgg_heads(tmp_path):
    # Its trunk ends in max+avg pooling (1024 values), VGG's in a 7x7 average pool (25088): one file for both
    # would feed a head the other's features.
    from vggtune.model.arch import preprocessing

    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    subsets = {"train": [(image, 0)]}
    keys = {
        head: cache_key("vgg11", "imagenet", preprocessing("vgg11", 32), True, subsets, head)
        for head in ("vgg", "pooled")
    }
    assert keys["vgg"] != keys["pooled"]
    assert keys["vgg"] == cache_key("vgg11", "imagenet", preprocessing("vgg11", 32), True, subsets)  # earlier caches
