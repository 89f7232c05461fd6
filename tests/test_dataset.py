"""Class discovery and the seeded, stratified split."""

from __future__ import annotations

import logging

import pytest
from conftest import make_class_folders
from torch.utils.data import DistributedSampler

from vggtune.core.errors import UserError
from vggtune.data.batching import batch_for_data, lone_last_image
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.discovery import discover, labelled_images


@pytest.fixture()
def data(tmp_path):
    return make_class_folders(tmp_path / "d", classes=4, per_class=13)


def _as_sets(split):
    return {s: {p for p, _ in items} for s, items in split.subsets.items()}


def test_same_seed_same_split_and_another_seed_another(data):
    a, b = discover(data, 0.2, 0.15, seed=1), discover(data, 0.2, 0.15, seed=1)
    assert a.subsets == b.subsets
    c = discover(data, 0.2, 0.15, seed=2)
    assert _as_sets(c) != _as_sets(a)


def test_every_image_in_exactly_one_subset(data):
    split = discover(data, 0.2, 0.15, seed=3)
    subsets = _as_sets(split)
    all_files = {p for p in data.rglob("img_*")}
    assert subsets["train"] | subsets["val"] | subsets["test"] == all_files
    assert not (
        subsets["train"] & subsets["val"] or subsets["train"] & subsets["test"] or subsets["val"] & subsets["test"]
    )


def test_every_class_in_every_subset_with_stratified_counts(data):
    split = discover(data, 0.2, 0.15, seed=4)
    counts = split.counts()
    for name in split.classes:
        assert counts["train"][name] >= 1 and counts["val"][name] >= 1 and counts["test"][name] >= 1
        assert counts["val"][name] == round(13 * 0.2) and counts["test"][name] == round(13 * 0.15)


def test_labels_follow_sorted_class_names(data):
    split = discover(data, 0.2, 0.0, seed=0)
    assert split.classes == sorted(split.classes)
    assert "test" not in split.subsets
    for path, label in split.subsets["train"]:
        assert path.parent.name == split.classes[label]


def test_hidden_files_and_folders_and_other_extensions_are_ignored(data):
    (data / ".ipynb_checkpoints").mkdir()
    (data / "checks" / ".hidden.jpg").write_bytes(b"x")
    (data / "checks" / "notes.txt").write_text("x")
    (data / "checks" / "UPPER.JPG").write_bytes((data / "checks" / "img_001.jpg").read_bytes())
    split = discover(data, 0.2, 0.0, seed=0)
    assert ".ipynb_checkpoints" not in split.classes
    names = {p.name for items in split.subsets.values() for p, _ in items}
    assert "UPPER.JPG" in names and ".hidden.jpg" not in names and "notes.txt" not in names


def test_presplit_layout_uses_its_folders(tmp_path):
    for subset, n in (("train", 6), ("val", 3), ("test", 2)):
        make_class_folders(tmp_path / "p" / subset, classes=3, per_class=n, seed=len(subset))
    split = discover(tmp_path / "p", 0.2, 0.1, seed=0)
    assert split.layout == "presplit"
    assert {s: len(v) for s, v in split.subsets.items()} == {"train": 18, "val": 9, "test": 6}
    assert all(p.parts[-3] == "val" for p, _ in split.subsets["val"])


def test_presplit_with_mismatched_classes_is_refused(tmp_path):
    make_class_folders(tmp_path / "p" / "train", classes=3, per_class=4)
    make_class_folders(tmp_path / "p" / "val", classes=2, per_class=2)
    with pytest.raises(UserError, match="same class folders"):
        discover(tmp_path / "p")


@pytest.mark.parametrize("val, test", [(0.0, 0.1), (1.2, 0.0), (0.6, 0.5), (-0.1, 0.1)])
def test_impossible_fractions_are_refused(data, val, test):
    with pytest.raises(UserError, match="val_split|test_split"):
        discover(data, val, test)


def test_labelled_images_keeps_every_image_unsplit_and_allows_one_class(tmp_path):
    root = make_class_folders(tmp_path / "one", classes=1, per_class=3)
    found = labelled_images(root)
    assert list(found.subsets) == ["all"] and len(found.classes) == 1
    assert sorted(p for p, _ in found.subsets["all"]) == sorted(root.rglob("*.*"))
    presplit = tmp_path / "pre"
    for subset in ("train", "val"):
        make_class_folders(presplit / subset, classes=2, per_class=2)
    assert set(labelled_images(presplit).subsets) == {"train", "val"}


@pytest.mark.slow
def test_a_last_training_batch_of_one_image_is_left_out_so_batchnorm_can_train(tmp_path):
    """9 training images in batches of 4 would end each epoch on a batch of one, which BatchNorm cannot
    train on ("Expected more than 1 value per channel"): the loader drops it, a different image each epoch."""
    from vggtune.data.datamodule import ClassFolderDataModule

    root = make_class_folders(tmp_path / "d", classes=3, per_class=4)
    dm = ClassFolderDataModule(root, val_split=0.25, test_split=0.0, image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 9
    left_out = []
    for epoch in range(4):
        dm._first_epoch = epoch
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        sizes = [len(y) for _, y in loader]
        assert sizes == [4, 4], sizes
        left_out.append(list(loader.sampler)[-1])
    assert len(set(left_out)) > 1, left_out
    dm.batch_size = 3  # no remainder: nothing is dropped
    assert [len(y) for _, y in dm.train_dataloader()] == [3, 3, 3]


@pytest.mark.parametrize("balanced", [False, True], ids=["shuffled", "balanced"])
def test_a_sampler_started_part_way_gives_the_rest_of_that_epoch_once(balanced):
    from vggtune.data.datasets import BalancedSampler, EpochSampler

    dataset = list(range(23))

    def make():
        if balanced:
            return BalancedSampler(dataset, [i % 3 == 0 for i in dataset], num_replicas=2, rank=1, seed=5)
        return EpochSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=5)

    whole = make()
    whole.set_epoch(3)
    order = list(whole)
    resumed = make()
    resumed.set_epoch(3)
    resumed.start_at(3, 8)  # 4 batches of 2 already trained on this rank
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # once: the next pass over the epoch is whole
    later = make()
    later.start_at(3, 8)
    later.set_epoch(4)  # another epoch: nothing left out
    again = make()
    again.set_epoch(4)
    assert list(later) == list(again) and len(later) == len(order)


def test_a_batch_larger_than_the_training_set_becomes_one_batch_of_all_of_it(data, caplog):
    dm = ClassFolderDataModule(data, val_split=0.25, test_split=0.0, image_size=32, batch_size=64, num_workers=0)
    n = len(dm.split.subsets["train"])
    with caplog.at_level(logging.INFO, logger="vggtune.data.datamodule"):
        dm.setup("fit")
    assert [len(y) for _, y in dm.train_dataloader()] == [n]  # every image, in one batch
    said = [r.getMessage() for r in caplog.records if "data.batch_size=64" in r.getMessage()]
    assert said == [
        f"data.batch_size=64 is more than the {n} training images: training on batches of {n}, one per epoch"
    ]
    dm.setup("validate")  # Lightning calls setup per stage: said once
    assert len([r for r in caplog.records if "data.batch_size=64" in r.getMessage()]) == 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_smaller_batch_is_each_devices_share_under_ddp(world):
    # From files: as many as torch's DistributedSampler gives each rank, so each trains one whole batch.
    share = len(DistributedSampler(range(21), num_replicas=world, rank=0))
    assert batch_for_data(64, 21, world) == share
    assert not lone_last_image(share, batch_for_data(64, 21, world))  # no image left out by drop_last
    # A stream: litdata drops a rank's partial last batch under DDP, so no more than each rank's whole share.
    assert batch_for_data(64, 21, world, stream=True) == 21 // world
    assert batch_for_data(8, 21, world) == min(8, share)  # a batch that fits is kept
