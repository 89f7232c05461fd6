"""Find unusable image files before training starts, not as a crash in epoch 7."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb

VERIFY_MODES = ("header", "full", "files")
ON_BAD_IMAGE = ("skip", "fail")

# Where a complete file of each format ends; a cut-off download or copy lacks it.
_TRAILERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


class BadImage(NamedTuple):
    """A file left out of the data set, and why."""

    path: Path
    reason: str


def scan_images(paths: list[Path], verify: str = "header", on_bad_image: str = "skip"):
    """Split ``paths`` into usable images and :class:`BadImage` records.

    ``verify=header`` opens each file's header and checks that JPEG and PNG files are complete
    (fast); ``verify=full`` decodes every image; ``verify=files`` only checks that each file exists,
    is readable and not empty (for large data sets already known to be good: a bad image then stops
    training when it is reached). ``on_bad_image=fail`` raises a UserError
    naming the first bad file instead of leaving it out.
    """
    if verify not in VERIFY_MODES:
        raise UserError(f"data.verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if on_bad_image not in ON_BAD_IMAGE:
        raise UserError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    full = verify == "full"
    if verify == "files":  # a stat per file: threads would cost more than they save
        reasons = [_check_file(p) for p in paths]
    else:  # opening files waits on the disk: threads overlap it; chunks keep the pool's overhead small
        chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
        with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
            reasons = [r for chunk in pool.map(lambda c: [image_problem(p, full) for p in c], chunks) for r in chunk]
    good, bad = [], []
    for path, reason in zip(paths, reasons):
        if reason is None:
            good.append(path)
        elif on_bad_image == "fail":
            raise UserError(
                f"bad image {path}: {reason}. Remove or fix it, or pass data.on_bad_image=skip to leave such files out"
            )
        else:
            bad.append(BadImage(path, reason))
    return good, bad


def image_problem(path: Path, full: bool = True) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can (``full`` decodes every pixel)."""
    reason = _check_file(path)
    if reason:
        return reason
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if full:
                load_rgb(path)
                return None
            return _check_header(path)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        return _describe(e)


def _check_header(path: Path) -> str | None:
    with Image.open(path) as im:
        fmt = im.format
        w, h = im.size
    if w < 1 or h < 1:
        return f"image has no pixels ({w}x{h})"
    trailer = _TRAILERS.get(fmt or "")
    if trailer:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))
            if trailer not in f.read():
                return f"truncated {fmt} file (its end marker is missing)"
    return None


def _check_file(path: Path) -> str | None:
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return f"cannot be read ({e.strerror or e}; a broken link or a symlink loop?)"
    if size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _describe(e: Exception) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(e, PermissionError):
        return "cannot be read (permission denied)"
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "truncated" in text.lower():
        return f"truncated file, cannot be decoded ({text})"
    return f"cannot be decoded ({text})"
