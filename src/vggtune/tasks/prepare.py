"""``vggtune prepare``: the split ``train`` would make, written as litdata shards of pre-resized images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.stream_store import normalise
from vggtune.data.stream_write import check_format, write_stream
from vggtune.data.workers import resolve_workers
from vggtune.tasks.runs import report_files, write_skipped

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict:
    """Discover and split ``cfg.data`` as training does; write the subsets to ``cfg.output``; return the
    description written beside the shards."""
    check_format(cfg.format, cfg.quality)
    workers = resolve_workers(cfg.num_workers, "num_workers")
    output = normalise(str(cfg.output))
    datamodule: ClassFolderDataModule = instantiate(
        cfg.data, stream=None, cache_images=False, cache_features=False, batch_size=1
    )  # nothing is batched here
    split, prep = datamodule.split, datamodule.preprocessing
    storage = cast(dict, OmegaConf.to_container(cfg.data.storage_options)) if cfg.data.get("storage_options") else None
    log.info(
        "Data: %s (%s), %d classes; images: %s",
        split.root,
        split.layout,
        len(split.classes),
        ", ".join(f"{s} {len(items)}" for s, items in split.subsets.items()),
    )
    info = write_stream(split, prep, output, cfg.format, int(cfg.quality), workers, str(cfg.chunk_bytes), storage)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_skipped(run_dir, info["skipped"], csv=split.layout.startswith("csv"))
    size = f", {info['bytes'] / 1e6:.1f} MB on disk" if info["bytes"] is not None else ""
    log.info(
        "Wrote %d images in %.1f s (%.0f images/s)%s: %s",
        info["images"],
        info["seconds"],
        info["images"] / max(info["seconds"], 1e-9),
        size,
        ", ".join(f"{s} {entry['count']}" for s, entry in info["subsets"].items()),
    )
    log.info(
        "Train from it with: vggtune train data.stream=%s model=%s data.image_size=%s",
        output,
        cfg.model.arch,
        prep.image_size,
    )
    report_files(
        run_dir,
        {"prepare.log": "this log"} | ({"skipped_images.txt": "files left out and why"} if info["skipped"] else {}),
    )
    return info


def run(cfg: DictConfig) -> dict:
    """The ``vggtune prepare`` task."""
    return prepare(cfg)
