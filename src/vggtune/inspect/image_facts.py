"""What a file says about itself, read once: its content hash (exact duplicates), a 16 x 16 grey copy (near
duplicates), its size and how flat it is.

These need no network: an image a few pixels wide, a long thin strip, or a blank frame (a failed
camera, a placeholder, a scan of nothing) is worth a look whatever its label.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vggtune.data.images import to_rgb


@dataclass(frozen=True)
class ImageFacts:
    """A file's SHA-256, its pixel size, the standard deviation of its grey levels (0-255, on a small copy), and
    that copy at 16 x 16 less its mean (256 values), which resizing or re-encoding the file hardly changes."""

    digest: str
    width: int
    height: int
    grey_std: float
    tiny: np.ndarray


@dataclass(frozen=True)
class OddRules:
    """When an image is odd: shorter side under ``min_side`` px, sides in a ratio above ``max_aspect``,
    or grey levels with a standard deviation under ``min_std`` (near-constant)."""

    min_side: int = 32
    max_aspect: float = 4.0
    min_std: float = 3.0

    def reasons(self, facts: ImageFacts) -> list[str]:
        """Why ``facts`` is odd (none: it is not)."""
        out = []
        short, long = sorted((facts.width, facts.height))
        if short < self.min_side:
            out.append(f"tiny ({facts.width}x{facts.height} px)")
        if short and long / short > self.max_aspect:
            out.append(f"extreme aspect ({long / short:.1f}:1)")
        if facts.grey_std < self.min_std:
            out.append(f"near-constant (grey std {facts.grey_std:.1f})")
        return out


def read_facts(path: Path) -> ImageFacts:
    """:class:`ImageFacts` of one file (it is read once: the hash and the decode share the bytes)."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        im.draft("RGB", (64, 64))  # JPEG: decode at 1/2 to 1/8 scale, enough for a spread of grey levels
        grey = to_rgb(im).convert("L")
    small = grey.copy()
    small.thumbnail((64, 64))
    tiny = np.asarray(grey.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    tiny -= tiny.mean()  # the image's own brightness says nothing about which image it is
    return ImageFacts(
        hashlib.sha256(data).hexdigest(), width, height, float(np.asarray(small, dtype=np.float32).std()), tiny
    )


def all_facts(paths: list[Path]) -> list[ImageFacts]:
    """:func:`read_facts` of every path, in order (threads overlap the disk and the decoding)."""
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(read_facts, paths, chunksize=64))
