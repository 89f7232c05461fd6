"""A small generated data set (coloured textures: checks, stripes, dots) for the offline demo and tests."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vggtune.data.datamodule import ClassFolderDataModule

log = logging.getLogger(__name__)

PATTERNS = ("checks", "hstripes", "vstripes", "dstripes", "dots")


def draw_pattern(pattern: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` image of ``pattern`` in two random colours, random scale and phase, with noise.

    Textures rather than object shapes: a VGG trained from random init on a few hundred images
    learns them within a minute on a CPU, which objects at 32 px are not.
    """
    c1 = rng.integers(0, 256, 3)
    c2 = rng.integers(0, 256, 3)
    while np.abs(c1 - c2).sum() < 150:  # keep the two colours apart
        c2 = rng.integers(0, 256, 3)
    half = rng.uniform(3, 7) * size / 64  # half a period, in pixels
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + rng.uniform(0, 2 * half, (2, 1, 1))
    rows, cols = (yy // half) % 2, (xx // half) % 2
    if pattern == "checks":
        mask = (rows + cols) % 2
    elif pattern == "hstripes":
        mask = rows
    elif pattern == "vstripes":
        mask = cols
    elif pattern == "dstripes":
        mask = ((yy + xx) // (1.5 * half)) % 2
    elif pattern == "dots":
        mask = (((yy % (2 * half)) - half) ** 2 + ((xx % (2 * half)) - half) ** 2) < (0.6 * half) ** 2
    else:
        raise ValueError(f"unknown pattern {pattern!r}: one of {PATTERNS}")
    pixels = np.where(mask[..., None] > 0, c1, c2) + rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_demo_dataset(root: str | Path, per_class: int = 80, size: int = 64, classes: int = 3,
                      seed: int = 0) -> Path:
    """Write ``classes`` class folders of ``per_class`` JPEGs each to ``root`` (atomically), and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a half-written data set is never mistaken for a
    # finished one, and several processes (DDP ranks) can race safely.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    for pattern in PATTERNS[:classes]:
        (tmp / pattern).mkdir()
        for i in range(per_class):
            draw_pattern(pattern, size, rng).save(tmp / pattern / f"{pattern}_{i:03d}.jpg", quality=92)
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class DemoDataModule(ClassFolderDataModule):
    """A ClassFolderDataModule that first generates the demo data set into ``root`` if it is missing."""

    def __init__(self, root: str = "data/demo", per_class: int = 150, source_size: int = 64,
                 classes: int = 3, **kwargs):
        super().__init__(root=root, **kwargs)
        self.demo = dict(per_class=per_class, size=source_size, classes=classes)

    def prepare_data(self) -> None:
        """Generate the data set if it is missing (safe to call from several processes)."""
        if not Path(self.root).expanduser().exists():
            log.info("Generating the demo data set (%s classes x %s images) into %s", self.demo["classes"],
                     self.demo["per_class"], self.root)
            make_demo_dataset(Path(self.root).expanduser(), **self.demo)
