"""Cached features: with a frozen backbone, compute each image's backbone output once.

A linear probe's backbone never changes, so recomputing it every epoch is wasted work: the
images go through it once (deterministic eval transforms: augmentation is off) and later epochs
train the head from the stored outputs. The cache is keyed by everything the outputs depend
on: architecture, weights, preprocessing, where the backbone ends, and the image files (path,
size, modification time) with their labels. Anything else gives another key, so a stale
cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.model.arch import Preprocessing, imagenet_weights

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def weights_identity(weights: str, seed: int) -> str:
    """What the backbone's starting weights are, for the cache key."""
    if weights.lower() == "none":
        return f"random-init:seed={seed}"  # the init is drawn after seeding
    if weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    stat = path.stat()
    return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_key(
    arch: str,
    weights: str,
    prep: Preprocessing,
    train_fc: bool,
    subsets: dict[str, list[tuple[Path, int | tuple[int, ...]]]],
    head: str = "vgg",
    pooling: str | None = None,
) -> str:
    """A hash of everything the cached outputs depend on (``pooling``: a trunk that pools the conv block its
    own way, e.g. the audit's ``mean``)."""
    files = {
        s: [(str(p), list(label) if isinstance(label, tuple) else int(label), *_file_stamp(p)) for p, label in items]
        for s, items in subsets.items()
    }
    identity = {
        "format": CACHE_FORMAT,
        "arch": arch,
        "weights": weights,
        "prep": prep.to_dict(),
        "trunk_ends_after": "conv" if train_fc else "fc7",
        "files": files,
        "torch": torch.__version__.split("+")[0],
    }
    if head != "vgg":  # the trunk's pooling differs (keys of earlier caches stay as they were)
        identity["head"] = head
    if pooling is not None:
        identity["pooling"] = pooling
    if weights == "imagenet":
        identity["weights_url"] = imagenet_weights(arch).url
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _file_stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@torch.inference_mode()
def compute_outputs(
    trunk: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's output (float32, on the CPU) and the label of every item of ``dataset``, in order."""
    was_training = trunk.training
    trunk.eval().to(device)
    outputs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        outputs.append(trunk(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    trunk.train(was_training)
    return torch.cat(outputs), torch.cat(labels)


def cached_datasets(
    cache_dir: str | Path,
    key: str,
    trunk: nn.Module,
    datasets: Mapping[str, Dataset],
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> dict[str, TensorDataset]:
    """Per subset, a dataset of (backbone output, label): read from ``cache_dir`` or computed and stored."""
    path = Path(cache_dir).expanduser() / f"features-{key}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        log.info("Features: read from the cache %s", path)
    else:
        log.info("Features: computing the frozen backbone's output for every image once (augmentation off)")
        stored = {name: compute_outputs(trunk, ds, batch_size, num_workers, device) for name, ds in datasets.items()}
        try:
            with atomic_open(path, "wb") as f:
                torch.save(stored, f)
        except OSError as e:
            raise UserError(
                f"could not write the feature cache {path} ({e.strerror or e}): set data.cache_dir to a writable folder"
            ) from None
        log.info("Features: stored in %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return {name: TensorDataset(*stored[name]) for name in datasets}
