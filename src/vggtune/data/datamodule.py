"""The LightningDataModule for a folder of class folders, or images labelled in a CSV file."""

from __future__ import annotations

import logging
from collections.abc import Sized
from functools import cached_property
from typing import TYPE_CHECKING, cast

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vggtune.core.checks import check_positive_int
from vggtune.core.errors import UserError
from vggtune.data.augment import LookDrawer
from vggtune.data.balance import loss_weights
from vggtune.data.batching import fit_batch_to_data, lone_last_image
from vggtune.data.datasets import BalancedSampler, EpochSampler, ImageListDataset, ResumableLoader, multi_hot
from vggtune.data.discovery import DataSplit, discover
from vggtune.data.exclude import apply_exclude
from vggtune.data.feature_cache import cache_key, cached_datasets
from vggtune.data.image_cache import CachedImageDataset, cache_path, device_transform, ensure_cache, usable_cores
from vggtune.data.mixing import BatchMixer, check_alphas
from vggtune.data.optional import import_stream
from vggtune.data.transforms import DEVICE_LEVELS, check_augment, eval_transform, train_transform
from vggtune.data.workers import leave_signals_to_main, resolve_workers
from vggtune.model.arch import Preprocessing, frozen_trunk, preprocessing
from vggtune.model.resume import batches_done_in_epoch

if TYPE_CHECKING:
    from vggtune.data.stream import Stream, StreamLoader

log = logging.getLogger(__name__)
BALANCE_MODES = ("none", "sampler", "loss")


class ClassFolderDataModule(pl.LightningDataModule):
    """Images from ``root`` (class folders, or train/val[/test] folders of class folders), or the rows of
    the CSV file ``labels`` (see :mod:`vggtune.data.labels_csv`).

    ``batch_size`` is per device. ``num_workers`` and ``pin_memory`` accept ``auto``: up to 8
    workers (one per core) and pinned memory when a GPU is present. With ``cache_features`` the
    train task calls :meth:`use_cached_features` and batches hold backbone outputs, not images.
    """

    def __init__(
        self,
        root: str | None = None,
        val_split: float = 0.2,
        test_split: float = 0.1,
        image_size: int | None = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        augment: str = "light",
        verify: str = "header",
        on_bad_image: str = "skip",
        seed: int = 42,
        arch: str = "vgg16",
        cache_features: bool = False,
        cache_images: bool | str = False,
        cache_dir: str = "~/.cache/vggtune",
        cache_workers: int | str = "auto",
        crop_scale: float | None = None,
        flip: bool = True,
        rotate: float | None = None,
        zoom: float | None = None,
        warp: float | None = None,
        affine_p: float | None = None,
        brightness: float | None = None,
        contrast: float | None = None,
        lighting_p: float | None = None,
        labels: str | None = None,
        path_column: str | None = None,
        label_column: str | None = None,
        split_column: str | None = None,
        balance: str = "none",
        class_weights: list[float] | dict[str, float] | None = None,
        label_delim: str | None = None,
        stream: str | None = None,
        storage_options: dict | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        exclude: str | list[str] | None = None,
    ):
        super().__init__()
        check_positive_int("data.batch_size", batch_size)
        self.root, self.val_split, self.test_split, self.seed = root, val_split, test_split, seed
        self.labels, self.label_delim, self.exclude = labels, label_delim, exclude
        if balance not in BALANCE_MODES:
            raise UserError(
                f"data.balance={balance} is not a mode: choose none, sampler (every class equally "
                "likely in each epoch's draw) or loss (class weights in the training loss)"
            )
        self.balance, self._class_weights = balance, class_weights
        self.columns = {"path_column": path_column, "label_column": label_column, "split_column": split_column}
        self.batch_size, self.augment = batch_size, augment
        self.verify, self.on_bad_image = verify, on_bad_image
        self.num_workers = resolve_workers(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory)
        self.arch = arch
        self.preprocessing: Preprocessing = preprocessing(arch, image_size)
        steps = dict(rotate=rotate, zoom=zoom, warp=warp, affine_p=affine_p)
        steps |= dict(brightness=brightness, contrast=contrast, lighting_p=lighting_p)
        self.mixup, self.cutmix = check_alphas(mixup, cutmix)
        self.train_transform = train_transform(self.preprocessing, augment, crop_scale, flip, **steps)
        look = check_augment(augment, crop_scale, flip, **steps)  # the level's values where a key is null
        self.crop_scale, self.flip, self.on_device = look.crop_scale, look.flip, augment in DEVICE_LEVELS
        self.look = LookDrawer(look, self.preprocessing.image_size)  # the cache's and stream's, after crop and flip
        self.eval_transform = eval_transform(self.preprocessing)
        self.cache_features, self.cache_images, self.cache_dir = bool(cache_features), cache_images, cache_dir
        workers = usable_cores() if cache_workers == "auto" else check_positive_int("data.cache_workers", cache_workers)
        self.cache_workers = workers
        self._image_caches: dict[str, list] = {}  # subset -> its image files, once use_image_cache has run
        self._caches_ready: set[str] = set()  # the subsets whose cache file this process has seen complete
        self._on_device_transform = False
        self.stream, self.storage_options = stream, storage_options
        self._stream_loader: StreamLoader | None = None  # the training loader, whose position is saved
        self._stream_state: dict | None = None  # where a resumed run's stream goes on (load_state_dict)
        self.datasets: dict[str, Dataset] = {}
        self._first_epoch = 0  # the epoch a resumed run starts in (load_state_dict)
        self._resume_batches = 0  # the batches of it trained before the interruption

    @cached_property
    def split(self) -> DataSplit:
        """The discovered classes and subsets (scanned once, on first use)."""
        if self.stream:
            if self.exclude:
                raise UserError(
                    "data.exclude leaves image files out, and data.stream holds no files: prepare the "
                    "stream again with the same data.exclude (vggtune prepare ... data.exclude=...)"
                )
            split = self.stream_source.split()
        else:
            self.prepare_data()
            split = apply_exclude(
                discover(
                    self.root,
                    self.val_split,
                    self.test_split,
                    self.seed,
                    self.verify,
                    self.on_bad_image,
                    self.labels,
                    self.columns,
                    self.label_delim,
                ),
                self.exclude,
            )
        if split.multilabel and self.balance != "none":
            raise UserError(
                f"data.balance={self.balance} balances single-label classes; with several labels per "
                "image (data.label_delim) use data.balance=none"
            )
        return split

    @cached_property
    def stream_source(self) -> Stream:
        """With ``stream``: the prepared stream, checked against the model's preprocessing."""
        stream = import_stream()
        source = stream.Stream(str(self.stream), self.storage_options)
        source.check_fits(self.preprocessing, self.arch)
        if self.augment == "strong":
            raise UserError(
                "data.stream supports data.augment=light, crop or none (its crops and flips run on the "
                "device, as with data.cache_images); train from data.root for data.augment=strong"
            )
        return source

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (sorted folder names)."""
        return self.split.classes

    @property
    def num_labels(self) -> int | None:
        """Multi-label: the number of labels a target has; None for one class per image."""
        return len(self.split.classes) if self.split.multilabel else None

    def loss_weights(self) -> list[float] | None:
        """With ``balance=loss``: the weight of each class in the training loss (:func:`~vggtune.data.balance.loss_weights`)."""
        wanted = self.balance == "loss"
        return loss_weights(self.class_names, self.split.counts()["train"], self._class_weights) if wanted else None

    def use_cached_features(
        self, model: torch.nn.Module, train_fc: bool, weights_id: str, device: torch.device, head: str = "vgg"
    ) -> None:
        """Train from the frozen backbone's outputs, computed once per image (eval transforms: no augmentation)."""
        if self.stream:
            raise UserError(
                "data.cache_features=true computes features from the image files: use data.root "
                "(not data.stream) with it"
            )
        images = {
            s: ImageListDataset(items, self.eval_transform, num_labels=self.num_labels)
            for s, items in self.split.subsets.items()
        }
        key = cache_key(self.arch, weights_id, self.preprocessing, train_fc, self.split.subsets, head)
        trunk, _ = frozen_trunk(model, train_fc)
        self.datasets = dict(
            cached_datasets(self.cache_dir, key, trunk, images, self.batch_size, self.num_workers, device)
        )

    def use_image_cache(self) -> None:
        """Read pre-resized images from a one-time cache and crop, flip and normalise them on the device.

        The cache files are built by :meth:`prepare_data` (Lightning runs it on each node's local rank 0
        while the other ranks wait, so every image is decoded once per node) and opened in :meth:`setup`.
        """
        if self.stream:
            return  # the stream already holds the squares, and its batches take the same on-device step
        if self.augment == "strong":
            raise UserError(
                "data.cache_images=true supports data.augment=light, crop or none (its crops and flips run "
                "on the device); use data.cache_images=false for data.augment=strong"
            )
        size = self.preprocessing.resize_size
        for subset, items in self.split.subsets.items():
            paths = [p for p, _ in items]
            path = cache_path(paths, self.preprocessing, self.cache_dir)
            self._image_caches[subset] = paths
            train = subset == "train" and self.on_device
            labels = [
                label if self.num_labels is None else multi_hot(cast(tuple, label), self.num_labels)
                for _, label in items
            ]
            self.datasets[subset] = CachedImageDataset(
                path, labels, size, train, self.seed if train else None, self.crop_scale, self.flip, self.look
            )
        self._on_device_transform = True

    def prepare_data(self) -> None:
        """Build the image caches that are missing (after :meth:`use_image_cache`; nothing to do otherwise)."""
        self._ensure_image_caches()

    def _ensure_image_caches(self) -> None:
        # A cache that exists is only checked (a stat); one that is missing is built under a lock
        # beside it, so that ranks reaching here without prepare_data (no Trainer) still decode once.
        # Each once per process: Lightning calls prepare_data and setup again for each stage.
        for subset in [s for s in self._image_caches if s not in self._caches_ready]:
            ensure_cache(
                cast(CachedImageDataset, self.datasets[subset]).path,
                self._image_caches[subset],
                self.preprocessing.resize_size,
                self.cache_workers,
            )
            self._caches_ready.add(subset)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With the image cache: crop, flip (training) and normalise the batch where it now is; then, in
        training, MixUp or CutMix (data.mixup, data.cutmix) with the targets as class shares."""
        training = self.trainer is not None and self.trainer.training
        if self._on_device_transform:
            batch = device_transform(batch, self.preprocessing, train=training and self.on_device)
        return self.mixer(*batch) if training and self.mixer is not None else batch

    @cached_property
    def mixer(self) -> BatchMixer | None:
        return BatchMixer(self.mixup, self.cutmix, len(self.class_names)) if self.mixup or self.cutmix else None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of every subset the split has (or open the image caches prepare_data built)."""
        self._ensure_image_caches()
        self._fit_batch_to_data()
        if self.datasets:
            return
        if self.stream:
            self._use_stream()
            return
        for subset, items in self.split.subsets.items():
            if subset == "train":
                self.datasets[subset] = ImageListDataset(
                    items, self.train_transform, seed=self.seed, num_labels=self.num_labels
                )
            else:
                self.datasets[subset] = ImageListDataset(items, self.eval_transform, num_labels=self.num_labels)

    def _fit_batch_to_data(self) -> None:
        """Fewer training images (on each device) than ``batch_size``: one batch of all of them per epoch."""
        world = self.trainer.world_size if self.trainer is not None else 1
        n_train = len(self.split.subsets["train"])
        self.batch_size = fit_batch_to_data(self.batch_size, n_train, world, stream=bool(self.stream))

    def _use_stream(self) -> None:
        run = str(self.trainer.default_root_dir) if self.trainer is not None else ""
        for subset in self.split.subsets:
            train = subset == "train"
            self.datasets[subset] = self.stream_source.dataset(
                subset,
                shuffle=train,
                augment=train and self.on_device,
                seed=self.seed,
                crop_scale=self.crop_scale,
                flip=self.flip,
                look=self.look,
                num_labels=self.num_labels,
                cache_root=self.cache_dir,
                run=run,
            )
        self._on_device_transform = True

    def _open_stream_loader(self, subset: str) -> StreamLoader:
        # New workers each epoch (not persistent): they take the epoch the loader sets (litdata's shuffle and
        # the crops' seeds), which persistent workers' copies of the dataset would not see.
        # None leaves litdata's own choice: under DDP it drops every partial last batch.
        drop_last = (
            True
            if subset == "train" and lone_last_image(len(cast(Sized, self.datasets[subset])), self.batch_size)
            else None
        )
        loader = import_stream().StreamLoader(
            self.datasets[subset],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            worker_init_fn=leave_signals_to_main,
            drop_last=drop_last,
        )
        if subset == "train":
            loader.start_epoch(self._first_epoch)
            if self._stream_state:  # interrupted part-way through that epoch: litdata skips what was trained
                loader.resume_from(self._stream_state)
                self._stream_state = None
            self._stream_loader = loader
        return loader

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled by (seed, epoch) and split across DDP ranks."""
        if self.stream:
            return self._open_stream_loader("train")
        dataset = self.datasets["train"]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler: EpochSampler
        if self.balance == "sampler":
            labels = [label for _, label in self.split.subsets["train"]]
            sampler = BalancedSampler(dataset, labels, num_replicas=replicas, rank=rank, seed=self.seed)
        else:
            sampler = EpochSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        # Lightning creates the iterator before it sets the sampler's epoch, and a resumed run keeps that
        # iterator, whose workers have already drawn their first indices: the first resumed epoch
        # replayed epoch 0's order (lightning #21938, fix PR #21941 open). Set the epoch it will set.
        sampler.set_epoch(self._first_epoch)
        # Interrupted part-way through that epoch (Ctrl-C, SIGTERM): its remaining batches, not all of it.
        sampler.start_at(self._first_epoch, self._resume_batches * self.batch_size)
        drop_last = lone_last_image(len(sampler), self.batch_size)  # the shuffle picks another one each epoch
        # A private generator: creating the iterator must not draw from the global RNG (dropout's).
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=leave_signals_to_main,
            position=self.state_dict,
        )

    def state_dict(self) -> dict:
        """Where Lightning's fit loop will resume: the epoch, and the batches of it already trained."""
        trainer = self.trainer
        if trainer is None:
            return {}
        state = {
            # a _ProcessedTracker, which Lightning 2.6 declares as its base class (without ``processed``)
            "epoch": trainer.fit_loop.epoch_progress.current.processed,  # type: ignore[attr-defined]
            "batches_done": batches_done_in_epoch(trainer),
        }
        if self._stream_loader is not None and state["batches_done"]:
            state["stream"] = self._stream_loader.position(state["batches_done"])
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restored before the loaders are built, so that the first resumed epoch draws its own order."""
        self._first_epoch = int(state_dict.get("epoch", 0))
        self._resume_batches = int(state_dict.get("batches_done", 0))
        self._stream_state = state_dict.get("stream")

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in split order."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Test batches; empty when the split has no test subset."""
        return self._loader("test") if "test" in self.datasets else []

    def _loader(self, subset: str) -> DataLoader:
        if self.stream:
            return self._open_stream_loader(subset)
        return DataLoader(
            self.datasets[subset],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=leave_signals_to_main,
        )
