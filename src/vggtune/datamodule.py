"""The LightningDataModule for a folder of class folders."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from vggtune.arch import Preprocessing, preprocessing
from vggtune.dataset import DataSplit, discover
from vggtune.errors import UserError
from vggtune.images import load_rgb
from vggtune.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


class ImageListDataset(Dataset):
    """(image tensor, class index) for a list of (path, class index) pairs.

    With a ``seed``, the random transform of item ``i`` in epoch ``e`` is seeded from
    (seed, e, i): augmentation is then the same whatever the number of workers, and a resumed
    run replays its epochs exactly. The epoch lives in shared memory, so that persistent
    workers see :meth:`set_epoch` too.
    """

    def __init__(self, items: list[tuple[Path, int]], transform, seed: int | None = None):
        self.items = items
        self.transform = transform
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Tell the dataset (and its workers) which epoch's augmentation to draw."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            image = load_rgb(path)
        except Exception as e:  # noqa: BLE001 - name the file, whatever PIL raised
            raise UserError(f"could not decode {path} during training ({type(e).__name__}: {e}); "
                            "run with data.verify=full to find such files before training starts") from None
        if self.seed is None:
            return self.transform(image), label
        sample_seed = (self.seed * 1_000_003 + int(self._epoch) * 65_537 + index) % 2**63
        if get_worker_info() is not None:  # a worker process owns its RNG
            torch.manual_seed(sample_seed)
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # leave the main process's RNG (dropout) alone
            torch.manual_seed(sample_seed)
            return self.transform(image), label


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (order from seed + epoch, one shard per rank), also on one device.

    Lightning calls ``set_epoch`` before every epoch, a resumed one too, so the order and the
    dataset's per-sample augmentation seeds depend on nothing but (seed, epoch): a run resumed
    from a checkpoint replays its epochs exactly. Lightning keeps a DistributedSampler as it is.
    """

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class ClassFolderDataModule(pl.LightningDataModule):
    """Images from ``root`` (class folders, or train/val[/test] folders of class folders).

    ``batch_size`` is per device. ``num_workers`` and ``pin_memory`` accept ``auto``: up to 8
    workers (one per core) and pinned memory when a GPU is present.
    """

    def __init__(self, root: str | None = None, val_split: float = 0.2, test_split: float = 0.1,
                 image_size: int | None = None, batch_size: int = 32, num_workers: int | str = "auto",
                 pin_memory: bool | str = "auto", augment: str = "light", verify: str = "header",
                 on_bad_image: str = "skip", seed: int = 42, arch: str = "vgg16"):
        super().__init__()
        check_positive_int("data.batch_size", batch_size)
        self.root, self.val_split, self.test_split, self.seed = root, val_split, test_split, seed
        self.batch_size, self.augment = batch_size, augment
        self.verify, self.on_bad_image = verify, on_bad_image
        self.num_workers = resolve_workers(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.preprocessing: Preprocessing = preprocessing(arch, image_size)
        self.train_transform = train_transform(self.preprocessing, augment)
        self.eval_transform = eval_transform(self.preprocessing)
        self.datasets: dict[str, ImageListDataset] = {}

    @cached_property
    def split(self) -> DataSplit:
        """The discovered classes and subsets (scanned once, on first use)."""
        self.prepare_data()
        split = discover(self.root, self.val_split, self.test_split, self.seed, self.verify, self.on_bad_image)
        n_train = len(split.subsets["train"])
        if self.batch_size > n_train:
            raise UserError(f"data.batch_size={self.batch_size} is larger than the {n_train} training images: "
                            f"use data.batch_size={max(1, n_train // 2)} or add images")
        return split

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (sorted folder names)."""
        return self.split.classes

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of every subset the split has."""
        if self.datasets:
            return
        for subset, items in self.split.subsets.items():
            if subset == "train":
                self.datasets[subset] = ImageListDataset(items, self.train_transform, seed=self.seed)
            else:
                self.datasets[subset] = ImageListDataset(items, self.eval_transform)

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled by (seed, epoch) and split across DDP ranks."""
        dataset = self.datasets["train"]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        # A private generator: creating the iterator must not draw from the global RNG (dropout's).
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in split order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches; empty when the split has no test subset."""
        return self._loader("test") if "test" in self.datasets else []

    def _loader(self, subset: str) -> DataLoader:
        return DataLoader(self.datasets[subset], batch_size=self.batch_size,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)


def resolve_workers(value: int | str, name: str = "data.num_workers") -> int:
    """``auto`` (one loader process per core, up to 8) or a whole number of at least 0."""
    return _auto_workers() if value == "auto" else check_positive_int(name, value, allow_zero=True)


def _auto_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


def check_positive_int(name: str, value, allow_zero: bool = False) -> int:
    """``value`` if it is a whole number of at least 1 (or 0 with ``allow_zero``), else a UserError naming ``name``."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer of at least {low}, got {value!r}")
    return value
