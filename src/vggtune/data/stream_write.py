"""Writing a data set's split as litdata shards: each subset's images pre-resized to the centre square.

Each sample holds the image (uint8 ``resize_size`` square, as the image cache stores it, or that
square as a JPEG), its label and its position in the subset (``index``, which seeds its training
crop). ``litdata.optimize`` writes the shards, with worker processes, to a folder or ``s3://``; a
JSON file beside them (:mod:`vggtune.data.stream_store`) names the classes, the preprocessing and
which file went where.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from vggtune.core.errors import UserError
from vggtune.data.discovery import SUBSETS, DataSplit
from vggtune.data.image_cache import _square
from vggtune.data.images import load_rgb
from vggtune.data.optional import import_stream
from vggtune.data.stream_store import (
    STREAM_FORMAT,
    STREAM_VERSION,
    allow_plain_http,
    check_empty_output,
    join,
    write_json,
)
from vggtune.model.arch import Preprocessing

log = logging.getLogger(__name__)
IMAGE_FORMATS = ("uint8", "jpeg")


def check_format(image_format: str, quality) -> None:
    """``format`` is uint8 or jpeg; ``quality`` a whole number from 1 to 95 (PIL's useful range)."""
    if image_format not in IMAGE_FORMATS:
        raise UserError(
            f"format={image_format} is not a stream format: choose uint8 (exact pixels, "
            "3 x size^2 bytes an image) or jpeg (smaller, lossy; quality=...)"
        )
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
        raise UserError(f"quality must be a whole number from 1 to 95 (JPEG quality), got {quality!r}")


def _sample(item: tuple, prep: Preprocessing, image_format: str, quality: int, failed_dir: str):
    """One litdata sample per readable image; an unreadable one is recorded and yields nothing."""
    index, path, label = item
    try:
        square = _square(prep.resize_size)(load_rgb(path))
    except Exception as e:  # noqa: BLE001 - name the file, whatever PIL raised, and go on
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        Path(failed_dir, f"{index}.txt").write_text(f"{path}\tnot a readable image ({reason})", encoding="utf-8")
        return
    if image_format == "jpeg":
        buffer = io.BytesIO()
        square.save(buffer, format="JPEG", quality=quality)
        image: bytes | np.ndarray = buffer.getvalue()
    else:
        image = np.asarray(square)
    yield {"index": index, "image": image, "label": label}


def _encode_label(label, num_labels: int | None):
    if num_labels is None:
        return int(label)
    hot = np.zeros(num_labels, dtype=np.uint8)  # a fixed shape: litdata wants the same layout in every sample
    hot[list(label)] = 1
    return hot


def write_stream(
    split: DataSplit,
    prep: Preprocessing,
    output: str,
    image_format: str = "uint8",
    quality: int = 90,
    workers: int = 1,
    chunk_bytes: str = "64MB",
    storage_options: dict | None = None,
) -> dict:
    """Write every subset of ``split`` under ``output/<subset>/`` and the description file; return it."""
    litdata = import_stream().litdata
    check_format(image_format, quality)
    check_empty_output(output, storage_options)
    allow_plain_http(storage_options)
    num_labels = len(split.classes) if split.multilabel else None
    subsets, skipped = {}, [list(map(str, bad)) for bad in split.skipped]
    start, images = time.perf_counter(), 0
    for subset in (s for s in SUBSETS if s in split.subsets):
        items = split.subsets[subset]
        inputs = [(i, str(p), _encode_label(label, num_labels)) for i, (p, label) in enumerate(items)]
        with tempfile.TemporaryDirectory(prefix="vggtune-prepare-") as failed_dir, _private_cache(failed_dir):
            log.info("Writing %s: %d images as %s squares of %d px", subset, len(items), image_format, prep.resize_size)
            litdata.optimize(
                partial(_sample, prep=prep, image_format=image_format, quality=quality, failed_dir=failed_dir),
                inputs,
                output_dir=join(output, subset),
                chunk_bytes=chunk_bytes,
                num_workers=max(1, min(workers, len(inputs))),
                reorder_files=False,
                keep_data_ordered=True,
                start_method="fork",
                storage_options=storage_options or {},
                verbose=sys.stderr.isatty(),
            )
            failed = {int(f.stem): f.read_text(encoding="utf-8").split("\t", 1) for f in Path(failed_dir).glob("*.txt")}
        skipped += [failed[i] for i in sorted(failed)]
        kept = [(i, p, label) for i, (p, label) in enumerate(items) if i not in failed]
        if not kept:
            raise UserError(f"none of the {len(items)} {subset} images could be read: see the reasons above")
        subsets[subset] = {
            "count": len(kept),
            "files": [[i, _relative(p, split.root), split.label_text(label)] for i, p, label in kept],
        }
        images += len(kept)
    seconds = time.perf_counter() - start
    info = {
        "format": STREAM_FORMAT,
        "version": STREAM_VERSION,
        "classes": split.classes,
        "label_delim": split.label_delim,
        "root": str(split.root),
        "layout": split.layout,
        "image_format": image_format,
        "quality": quality if image_format == "jpeg" else None,
        "preprocessing": prep.to_dict(),
        "counts": _counts(split, subsets),
        "subsets": subsets,
        "skipped": skipped,
        "images": images,
        "seconds": round(seconds, 3),
    }
    info["bytes"] = _size_on_disk(output)
    write_json(output, info, storage_options)
    return info


@contextmanager
def _private_cache(folder: str):
    """litdata stages the shards of a remote output in /tmp/chunks and /tmp/data, shared by every process on
    the machine: two prepares at once delete each other's files (as in litdata #398, #452). One of this call's."""
    names = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(Path(folder, name.lower())) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _counts(split: DataSplit, subsets: dict) -> dict:
    """Images per class for each subset, of those written (multi-label: images that have the label)."""
    out = {}
    for subset, entry in subsets.items():
        labels = [label for _, _, label in entry["files"]]
        names = [n for label in labels for n in (label.split(split.label_delim) if split.multilabel else [label])]
        out[subset] = {name: names.count(name) for name in split.classes}
    return out


def _size_on_disk(output: str) -> int | None:
    """Bytes of the shards of a local stream (None for object storage: not listed here)."""
    if "://" in output:
        return None
    return sum(f.stat().st_size for f in Path(output).rglob("*") if f.is_file())
