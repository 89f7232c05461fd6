"""Small generated data sets for the offline demo, the benchmarks and tests: coloured textures (checks,
stripes, dots), filled shapes, letters; and, for several labels per image, 2 x 2 grids of them."""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vggtune.core.errors import UserError
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


SHAPES = ("disc", "square", "triangle", "cross", "ring")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` image of a filled ``shape`` in a random colour, size, place and angle, on noisy colour."""
    bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(bg - fg).sum() < 150:
        fg = rng.integers(0, 256, 3)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = size / 2 + rng.uniform(-0.15, 0.15) * size, size / 2 + rng.uniform(-0.15, 0.15) * size
    col = tuple(int(c) for c in fg)
    if shape == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col, width=max(2, int(r / 3)))
    elif shape in ("square", "triangle"):
        a, k = rng.uniform(0, 2 * math.pi), 4 if shape == "square" else 3
        d.polygon(
            [
                (cx + r * math.cos(a + i * 2 * math.pi / k), cy + r * math.sin(a + i * 2 * math.pi / k))
                for i in range(k)
            ],
            fill=col,
        )
    elif shape == "cross":
        a, w = rng.uniform(0, 2 * math.pi), r / 3
        for b in (a, a + math.pi / 2):
            dx, dy = math.cos(b), math.sin(b)
            px, py = -dy * w, dx * w
            d.polygon(
                [
                    (cx - r * dx + px, cy - r * dy + py),
                    (cx + r * dx + px, cy + r * dy + py),
                    (cx + r * dx - px, cy + r * dy - py),
                    (cx - r * dx - px, cy - r * dy - py),
                ],
                fill=col,
            )
    else:
        raise ValueError(f"unknown shape {shape!r}: one of {SHAPES}")
    pixels = np.asarray(img, np.float32) + rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def draw_letter(letter: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` image of ``letter`` in Pillow's bundled font: grey on grey, random size, offset,
    rotation, stroke and blur, with noise."""
    bg = int(rng.integers(0, 256))
    fg = int(rng.integers(0, 256))
    while abs(fg - bg) < 90:
        fg = int(rng.integers(0, 256))
    big = 3 * size
    img = Image.new("L", (big, big), bg)
    font = ImageFont.load_default(size=int(rng.uniform(0.5, 0.85) * big))
    x, y = big / 2 + rng.uniform(-0.12, 0.12) * big, big / 2 + rng.uniform(-0.12, 0.12) * big
    ImageDraw.Draw(img).text(
        (x, y), letter, fill=fg, font=font, anchor="mm", stroke_width=int(rng.integers(0, 6)), stroke_fill=fg
    )
    img = img.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=bg)
    img = img.resize((size, size), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    pixels = np.asarray(img, np.float32) + rng.normal(0, 12, (size, size))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB")


COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
}


def draw_colour(colour: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A ``size`` x ``size`` patch of one named colour (:data:`COLOURS`), its shade varied, with noise."""
    base = np.array(COLOURS[colour], np.float32) * rng.uniform(0.75, 1.1) + rng.normal(0, 10, 3)
    pixels = np.broadcast_to(base, (size, size, 3)) + rng.normal(0, 14, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


# name: (class names, draw(class name, size, rng))
FAMILIES = {
    "textures": (PATTERNS, draw_pattern),
    "shapes": (SHAPES, draw_shape),
    "letters-a": (tuple("KLMNO"), draw_letter),
    "letters-b": (tuple("ABCDE"), draw_letter),
    "colours": (tuple(COLOURS), draw_colour),
}


def make_demo_dataset(
    root: str | Path, per_class: int = 80, size: int = 64, classes: int = 3, seed: int = 0, family: str = "textures"
) -> Path:
    """Write ``classes`` class folders of ``per_class`` JPEGs of ``family`` (one of :data:`FAMILIES`) to
    ``root`` (atomically), and return it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    names, draw = FAMILIES[family]
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a half-written data set is never mistaken for a
    # finished one, and several processes (DDP ranks) can race safely.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    for name in names[:classes]:
        (tmp / name).mkdir()
        for i in range(per_class):
            draw(name, size, rng).save(tmp / name / f"{name}_{i:03d}.jpg", quality=92)
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def draw_grid(names: list[str], size: int, rng: np.random.Generator, family: str = "textures") -> Image.Image:
    """A ``size`` x ``size`` image of 2 x 2 cells: each of ``names`` (classes of ``family``) in a random cell
    of its own, the other cells plain noisy grey. Textures are drawn at 64 px and cut to the cell, so that
    their stripes and dots keep the scale of the single-texture images."""
    cell = size // 2
    img = Image.new("RGB", (2 * cell, 2 * cell))
    cells = rng.permutation(4)
    draw = FAMILIES[family][1]
    for k in range(4):
        if k < len(names):
            tile = draw(names[k], max(cell, 64), rng) if family == "textures" else draw(names[k], cell, rng)
            tile = tile.crop((0, 0, cell, cell))
        else:
            grey = np.full((cell, cell, 3), float(rng.integers(60, 200)), np.float32) + rng.normal(
                0, 14, (cell, cell, 3)
            )
            tile = Image.fromarray(grey.clip(0, 255).astype(np.uint8))
        img.paste(tile, (int(cells[k] % 2) * cell, int(cells[k] // 2) * cell))
    return img


def make_multilabel_dataset(
    root: str | Path, images: int = 300, size: int = 64, seed: int = 0, family: str = "textures", max_labels: int = 3
) -> Path:
    """Write ``images`` JPEGs of :func:`draw_grid` (1 to ``max_labels`` different classes of ``family`` each) to
    ``root/images/`` and ``root/labels.csv`` (``path,labels``; the labels separated by spaces), atomically."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    names = list(FAMILIES[family][0])
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    (tmp / "images").mkdir()
    with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for i in range(images):
            chosen = sorted(rng.choice(names, size=int(rng.integers(1, max_labels + 1)), replace=False))
            name = f"images/{i:04d}.jpg"
            draw_grid(chosen, size, rng, family).save(tmp / name, quality=92)
            writer.writerow([name, " ".join(chosen)])
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class DemoDataModule(ClassFolderDataModule):
    """A ClassFolderDataModule that first generates the demo data set into ``root`` if it is missing."""

    def __init__(
        self,
        root: str = "data/demo/letters",
        per_class: int = 90,
        source_size: int = 48,
        classes: int = 5,
        family: str = "letters-b",
        **kwargs,
    ):
        super().__init__(root=root, **kwargs)
        if family not in FAMILIES:
            raise UserError(f"data.family={family} is not a demo family: choose one of {', '.join(FAMILIES)}")
        self.demo: dict[str, Any] = dict(per_class=per_class, size=source_size, classes=classes, family=family)

    def prepare_data(self) -> None:
        """Generate the data set if it is missing (safe to call from several processes)."""
        root = Path(cast(str, self.root)).expanduser()  # given to __init__
        if not root.exists():
            names = FAMILIES[self.demo["family"]][0][: self.demo["classes"]]
            log.info(
                "Generating the demo data set (%s: %s x %s images) into %s",
                self.demo["family"],
                ", ".join(names),
                self.demo["per_class"],
                self.root,
            )
            make_demo_dataset(root, **self.demo)
        super().prepare_data()  # the image cache, when one is used


class MultilabelDemoDataModule(ClassFolderDataModule):
    """The multi-label demo: :func:`make_multilabel_dataset` into ``root`` if it is missing, read from its CSV."""

    def __init__(
        self,
        root: str = "data/demo/texture_grids",
        images: int = 300,
        source_size: int = 64,
        family: str = "textures",
        **kwargs,
    ):
        kwargs.setdefault("labels", "labels.csv")
        kwargs.setdefault("label_delim", " ")
        super().__init__(root=root, **kwargs)
        if family not in FAMILIES:
            raise UserError(f"data.family={family} is not a demo family: choose one of {', '.join(FAMILIES)}")
        self.demo: dict[str, Any] = dict(images=images, size=source_size, family=family)

    def prepare_data(self) -> None:
        """Generate the data set if it is missing (safe to call from several processes)."""
        root = Path(cast(str, self.root)).expanduser()  # given to __init__
        if not root.exists():
            log.info(
                "Generating the multi-label demo data set (%d grids of 1 to 3 %s) into %s",
                self.demo["images"],
                self.demo["family"],
                self.root,
            )
            make_multilabel_dataset(root, **self.demo)
        super().prepare_data()  # the image cache, when one is used
