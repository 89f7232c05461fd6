"""Training batches read from litdata shards written by ``vggtune prepare`` (a folder or ``s3://``).

The samples are the image cache's pre-resized squares, so a batch goes through the same step as
the cache's: the crop box and flip of each image are drawn on the CPU by
:class:`~vggtune.data.image_cache.CachedImageDataset`'s seeded drawing, from (seed, epoch, the
image's index in its subset), and :func:`~vggtune.data.image_cache.device_transform` crops, flips
and normalises the batch where it is. litdata's ``StreamingDataset`` shuffles the training subset
(seeded, per epoch), splits it across DDP ranks and loader workers and, for object storage,
downloads the shards into a cache folder of this run's.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import litdata  # noqa: F401  (stream_write reaches litdata as stream.litdata, after import_stream's check)
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from PIL import Image

from vggtune.core.errors import UserError
from vggtune.data.augment import LookDrawer
from vggtune.data.discovery import DataSplit
from vggtune.data.image_cache import CachedImageDataset
from vggtune.data.scan import BadImage
from vggtune.data.stream_store import allow_plain_http, is_remote, join, normalise, read_info
from vggtune.data.transforms import DEFAULT_CROP_SCALE
from vggtune.model.arch import Preprocessing

# litdata logs its cache sizing and worker set-up at INFO, several lines per loader pass.
logging.getLogger("litdata").setLevel(logging.WARNING)
logging.getLogger("botocore").setLevel(logging.WARNING)  # "Found credentials in environment variables" per client


class Stream:
    """A prepared stream: where it is, and what its description file says."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = normalise(url)
        self.storage_options = dict(storage_options or {})
        self.info = read_info(self.url, self.storage_options)
        allow_plain_http(self.storage_options)

    @property
    def resize_size(self) -> int:
        """The side of the stored squares, in pixels."""
        return int(self.info["preprocessing"]["resize_size"])

    def split(self) -> DataSplit:
        """The classes and subsets as ``vggtune prepare`` wrote them (paths under the data root it read)."""
        info, root = self.info, Path(self.info["root"])
        classes, delim = list(info["classes"]), info.get("label_delim")
        index = {name: i for i, name in enumerate(classes)}

        def label(text: str):
            if delim is None:
                return index[text]
            return tuple(index[name] for name in text.split(delim) if name)

        subsets = {
            s: [(root / path, label(text)) for _, path, text in entry["files"]] for s, entry in info["subsets"].items()
        }
        skipped = [BadImage(Path(p), reason) for p, reason in info.get("skipped", [])]
        return DataSplit(root, classes, subsets, f"stream {self.url}", skipped, delim)

    def check_fits(self, prep: Preprocessing, arch: str, checkpoint: bool = False) -> None:
        """The squares must be the model's resize size: the crops are cut from them. ``checkpoint``: the
        size is a trained checkpoint's, so the fix is a stream prepared for it."""
        if self.resize_size != prep.resize_size:
            made = self.info["preprocessing"]["image_size"]
            again = f"prepare the stream again with model={arch} data.image_size={prep.image_size}"
            fix = (
                f"this checkpoint was trained at that size: {again}"
                if checkpoint
                else f"pass data.image_size={made}, or {again}"
            )
            raise UserError(
                f"data.stream {self.url} holds {self.resize_size} px squares (prepared for "
                f"data.image_size={made}), but model={arch} data.image_size={prep.image_size} needs "
                f"{prep.resize_size} px: {fix}"
            )

    def dataset(
        self,
        subset: str,
        shuffle: bool,
        augment: bool,
        seed: int,
        crop_scale: float = DEFAULT_CROP_SCALE,
        flip: bool = True,
        look: LookDrawer | None = None,
        num_labels: int | None = None,
        cache_root: str = "~/.cache/vggtune",
        run: str = "",
        with_index: bool = False,
    ) -> StreamedImages:
        """The subset's images; ``shuffle``: by (seed, epoch); ``augment``: seeded crops, flips and ``look``.

        From object storage, the shards are downloaded into a cache folder of this run's (``run``):
        litdata #398, #452 report hangs from cache folders left by other runs.
        """
        if subset not in self.info["subsets"]:
            raise UserError(f"data.stream {self.url} has no {subset} subset (it has {', '.join(self.info['subsets'])})")
        cache = None
        if is_remote(self.url):
            key = hashlib.sha256(f"{self.url}/{subset}/{run}".encode()).hexdigest()[:16]
            cache = str(Path(cache_root).expanduser() / "stream" / key)
        images = StreamedImages(
            join(self.url, subset),
            self.resize_size,
            shuffle,
            augment,
            seed,
            crop_scale,
            flip,
            look,
            num_labels,
            self.info["image_format"],
            cache,
            self.storage_options,
        )
        images.with_index = with_index
        return images


class StreamedImages(StreamingDataset):
    """Items (uint8 HWC square, label, crop box, flip, look), as :class:`CachedImageDataset` gives them; with
    ``with_index``, the image's position in its subset after them."""

    with_index = False

    def __init__(
        self,
        url: str,
        size: int,
        shuffle: bool,
        augment: bool,
        seed: int,
        crop_scale: float,
        flip: bool,
        look: LookDrawer | None,
        num_labels: int | None,
        image_format: str,
        cache_dir: str | None,
        storage_options: dict,
    ):
        super().__init__(url, cache_dir=cache_dir, shuffle=shuffle, seed=seed, storage_options=storage_options or None)
        self.num_labels, self.image_format = num_labels, image_format
        # Only its seeded crop-and-flip drawing is used: the squares come from the shards.
        self.crops = CachedImageDataset(Path(url), [], size, augment, seed if augment else None, crop_scale, flip, look)

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        if self.image_format == "jpeg":
            image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(sample["image"])).convert("RGB")))
        else:
            image = torch.from_numpy(np.array(sample["image"]))
        self.crops.set_epoch(self.current_epoch - 1)  # litdata counts epochs from 1, Lightning from 0
        drawn = self.crops.crop_and_flip(int(sample["index"]), image)
        label = sample["label"]
        if self.num_labels is not None:
            label = torch.from_numpy(np.asarray(label, dtype=np.float32))
        return (image, label, *drawn, int(sample["index"])) if self.with_index else (image, label, *drawn)


class StreamLoader(StreamingDataLoader):
    """litdata's loader, whose state the data module saves and restores itself.

    Lightning restores a loader's state only sometimes (none when ``estimated_stepping_batches``
    built the loader first, lightning #20550), and the state it saves counts the batch its
    prefetcher fetched but did not train. So :meth:`load_state_dict` (Lightning's call) does
    nothing; the data module puts :meth:`position` into its own state and :meth:`resume_from` it.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing: the data module has restored the position already (see the class docstring)."""

    def resume_from(self, state: dict) -> None:
        """Go on from a state written by :meth:`position` (litdata's own restore)."""
        super().load_state_dict(state)

    def position(self, batches_done: int) -> dict:
        """litdata's state after ``batches_done`` batches of the current epoch, not after what was prefetched."""
        state = self.state_dict()
        done = batches_done * self.batch_size
        state["num_samples_yielded"] = state["dataset"]["num_samples_yielded"] = done
        state["dataset"]["sample_in_epoch"] = done * state["dataset"]["world_size"]
        state["latest_worker_idx"] = (batches_done - 1) % max(1, self.num_workers)
        return state

    def start_epoch(self, epoch: int) -> None:
        """The next pass is epoch ``epoch`` (counted from 0): a resumed run's first epoch shuffles as its own."""
        self.current_epoch = epoch  # litdata adds one as the pass begins, and counts from 1
