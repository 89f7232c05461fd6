"""Reading image files: which names count as images, and decoding any of them to RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped.

    Folder symlinks are not followed (a symlink loop cannot trap the walk); file symlinks are kept.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_image_name(f))
    return sorted(found)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to 8-bit RGB.

    Grayscale, palette and CMYK convert as PIL does. ``Image.convert("RGB")`` alone gets two
    cases wrong: transparent pixels keep whatever colour they hide (we composite onto white),
    and 16-bit images are clipped at 255 instead of scaled. Raises PIL's and the OS's own
    errors for unreadable files.
    """
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an opened PIL image of any mode to RGB (see :func:`load_rgb`)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a.clip(0, top) * (255.0 / top)).round().astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
