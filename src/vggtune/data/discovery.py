"""Finding the images of a class-folder data set and splitting them into train/val/test.

Two layouts are understood: a folder of class folders (split here, stratified and seeded),
and a folder holding ``train/`` and ``val/`` (and optionally ``test/``) with the same class
folders in each. We do not use torchvision's ``ImageFolder`` for discovery because it takes
hidden folders such as ``.ipynb_checkpoints`` for classes and has no notion of a split.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

from vggtune.core.errors import UserError
from vggtune.data.images import IMAGE_EXTENSIONS, list_images
from vggtune.data.labels_csv import LabelledRow, check_classes, check_delim, read_labels_csv, resolve_csv_path
from vggtune.data.scan import BadImage, scan_images

log = logging.getLogger(__name__)
Item = tuple[Path, int | tuple[int, ...]]  # an image and its class index (multi-label: a tuple of them)
_T = TypeVar("_T")

SUBSETS = ("train", "val", "test")
MISSING_ROOT = (
    "no data folder given: pass data.root=/path/to/images (a folder of class folders), or "
    "data.labels=/path/to/labels.csv (a row per image: path,label), or try the demo with experiment=demo"
)


@dataclass
class DataSplit:
    """The images of each subset as (path, class index) pairs, and the class names.

    Multi-label (``label_delim`` set): each item's label is a tuple of class indices, maybe empty.
    """

    root: Path
    classes: list[str]
    subsets: dict[str, list[tuple[Path, int | tuple[int, ...]]]]
    layout: str
    skipped: list[BadImage] = field(default_factory=list)
    label_delim: str | None = None

    @property
    def multilabel(self) -> bool:
        return self.label_delim is not None

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each subset (multi-label: images that have the label)."""
        out = {}
        for subset, items in self.subsets.items():
            n = Counter(i for _, label in items for i in (label if isinstance(label, tuple) else (label,)))
            out[subset] = {name: n[i] for i, name in enumerate(self.classes)}
        return out

    def label_text(self, label: int | tuple[int, ...]) -> str:
        """A label as a split file and a CSV write it: the class name, or the names joined by the delimiter."""
        if self.label_delim is not None:  # multi-label: the labels are tuples
            return self.label_delim.join(self.classes[i] for i in cast(tuple, label))
        return self.classes[cast(int, label)]

    def write_csv(self, path: Path) -> None:
        """One row per image: path relative to the data root, class name (or names), subset."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "class", "subset"])
            for subset in SUBSETS:
                for p, label in self.subsets.get(subset, []):
                    where = p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else p.as_posix()
                    w.writerow([where, self.label_text(label), subset])


def read_split_csv(path: Path, root: Path, subset: str) -> list[tuple[Path, str]]:
    """The (absolute path, class name) rows of ``subset`` in a split file written by a training run."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(root / r["path"], r["class"]) for r in csv.DictReader(f) if r["subset"] == subset]


def discover(
    root: str | Path | None,
    val_split: float = 0.2,
    test_split: float = 0.1,
    seed: int = 42,
    verify: str = "header",
    on_bad_image: str = "skip",
    labels: str | Path | None = None,
    columns: dict | None = None,
    label_delim: str | None = None,
) -> DataSplit:
    """Find classes and images under ``root`` and split them (see the module docstring).

    With ``labels`` (a CSV file) the images and classes come from its rows instead; ``columns``
    names its path, label and split columns (``path_column``, ``label_column``, ``split_column``);
    ``label_delim`` makes each label cell a list of labels (multi-label).
    """
    root = _check_root(root)
    check_fractions(val_split, test_split)
    if check_delim(label_delim) is not None and not labels:
        raise UserError(
            f"data.label_delim={label_delim!r} needs data.labels=<a CSV file> with several labels per "
            "row; class folders give one label per image"
        )
    if labels:
        return _discover_csv(
            root, labels, val_split, test_split, seed, verify, on_bad_image, columns or {}, label_delim
        )
    if (root / "train").is_dir() and (root / "val").is_dir():
        return _discover_presplit(root, verify, on_bad_image)
    classes, files, skipped = _class_files(root, verify, on_bad_image)
    subsets: dict[str, list[Item]] = {s: [] for s in SUBSETS}
    for label, name in enumerate(classes):
        rng = random.Random(f"{seed}/{name}")
        for subset, paths in zip(SUBSETS, _split_one_class(name, files[name], val_split, test_split, rng)):
            subsets[subset].extend((p, label) for p in paths)
    if not subsets["test"]:
        del subsets["test"]
    return DataSplit(root, classes, subsets, "class_folders", skipped)


def labelled_images(
    root: str | Path | None,
    verify: str = "header",
    on_bad_image: str = "skip",
    labels: str | Path | None = None,
    columns: dict | None = None,
    label_delim: str | None = None,
) -> DataSplit:
    """Every usable image under ``root`` with its class, unsplit: for looking at a data set, not training.

    A folder of class folders gives one subset, ``all`` (a single class is allowed); a folder
    with ``train/`` and ``val/`` keeps its subsets; a labels CSV gives every row as ``all``.
    """
    root = _check_root(root)
    if labels:
        rows, rejected = read_labels_csv(
            labels, root, verify=verify, on_bad_image=on_bad_image, label_delim=label_delim, **(columns or {})
        )
        classes = sorted({label for r in rows for label in r.labels(label_delim)})
        if not classes:
            raise UserError(f"{resolve_csv_path(labels, root)} has no usable rows: see the reasons above")
        return DataSplit(root, classes, {"all": _items(rows, classes, label_delim)}, "csv", rejected.rows, label_delim)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return _discover_presplit(root, verify, on_bad_image)
    classes, files, skipped = _class_files(root, verify, on_bad_image, min_classes=1)
    items: list[Item] = [(p, label) for label, name in enumerate(classes) for p in files[name]]
    return DataSplit(root, classes, {"all": items}, "class_folders", skipped)


def check_fractions(val_split: float, test_split: float) -> None:
    """val_split in (0, 1), test_split in [0, 1), and room left for training images."""
    for name, v, low in (("val_split", val_split, 0.0), ("test_split", test_split, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (low <= v < 1):
            raise UserError(f"data.{name} must be a fraction in [0, 1), got {v!r}")
    if val_split <= 0:
        raise UserError("data.val_split must be above 0: the best checkpoint is chosen on the validation images")
    if val_split + test_split >= 1:
        raise UserError(
            f"data.val_split + data.test_split = {val_split + test_split:g} leaves no training "
            "images: keep their sum below 1 (e.g. data.val_split=0.2 data.test_split=0.1)"
        )


def _check_root(root: str | Path | None) -> Path:
    if root is None or str(root).strip() in ("", "???"):
        raise UserError(MISSING_ROOT)
    path = Path(str(root)).expanduser()
    if not path.exists():
        raise UserError(f"data.root {path} does not exist: pass a folder of class folders")
    if not path.is_dir():
        raise UserError(f"data.root {path} is a file, not a folder: pass a folder of class folders")
    return path.resolve()


def _class_files(root: Path, verify: str, on_bad_image: str, min_classes: int = 2):
    classes = class_folders(root)
    if not classes:
        raise UserError(
            f"data.root {root} has no class folders: put each class's images in a folder "
            "named after the class (e.g. {root}/cats/*.jpg, {root}/dogs/*.jpg)".replace("{root}", str(root))
        )
    if len(classes) < min_classes:
        raise UserError(
            f"data.root {root} has a single class folder ({classes[0]}): a classifier needs at "
            "least two classes, one folder each"
        )
    files, skipped = {}, []
    for name in classes:
        good, bad = scan_images(list_images(root / name), verify, on_bad_image)
        skipped += bad
        if not good:
            raise UserError(
                f"class folder {root / name} has no usable images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add images or remove the folder"
            )
        files[name] = good
    return classes, files, skipped


def _discover_csv(
    root: Path,
    labels,
    val_split: float,
    test_split: float,
    seed: int,
    verify: str,
    on_bad_image: str,
    columns: dict,
    delim: str | None = None,
) -> DataSplit:
    rows, reject = read_labels_csv(labels, root, verify=verify, on_bad_image=on_bad_image, label_delim=delim, **columns)
    csv_path = reject.csv_path
    joined = next((r.label for r in rows if any(d in r.label for d in (" ", ";", ",", "|"))), None)
    if delim is None and joined is not None:
        log.warning(
            "Labels such as %r hold spaces or separators: if a cell lists several labels, pass "
            "\"data.label_delim=' '\" (or the separator used) to train with several labels per image",
            joined,
        )
    given_split = bool(rows) and rows[0].subset is not None
    try:
        subsets = _split_rows(rows, val_split, test_split, seed, stratify=delim is None)
    except UserError as e:
        if delim is None and joined is not None:  # read as one label a cell, each combination is a class
            raise UserError(
                f"{e}. Labels such as {joined!r} hold spaces or separators: if a cell lists several "
                "labels, pass \"data.label_delim=' '\" (or the separator used)"
            ) from None
        raise
    classes, subsets = check_classes(subsets, reject, delim)
    if len(classes) < 2:
        raise UserError(
            f"{csv_path} gives {len(classes)} class(es) to train on "
            f"({', '.join(classes) or 'no usable rows'}): a classifier needs at least two"
        )
    if not subsets["val"]:
        raise UserError(
            f"{csv_path} has no usable val rows in its split column: mark some rows val (the best "
            "checkpoint is chosen on them), or drop the column to split by data.val_split"
        )
    out = {s: _items(items, classes, delim) for s, items in subsets.items() if items or s != "test"}
    layout = "csv with its own split" if given_split else "csv"
    return DataSplit(root, classes, out, layout, reject.rows, delim)


def _items(rows: list[LabelledRow], classes: list[str], delim: str | None) -> list:
    """(path, class index) pairs; multi-label: (path, tuple of class indices)."""
    index = {name: i for i, name in enumerate(classes)}
    if delim is None:
        return [(r.path, index[r.label]) for r in rows]
    return [(r.path, tuple(index[label] for label in r.labels(delim))) for r in rows]


def _split_rows(
    rows: list[LabelledRow], val_split: float, test_split: float, seed: int, stratify: bool = True
) -> dict[str, list[LabelledRow]]:
    """The subsets: the CSV's own when it has a split column, else a seeded split stratified per class
    (multi-label: a seeded split of all rows, since an image belongs to several classes)."""
    if rows and rows[0].subset is not None:
        out: dict[str, list[LabelledRow]] = {}
        for r in rows:
            out.setdefault(cast(str, r.subset), []).append(r)  # every row has a subset when the first has
        return out
    if not stratify:
        train, val, test = _split_one_class("(all rows)", rows, val_split, test_split, random.Random(f"{seed}/all"))
        return {"train": train, "val": val, "test": test}
    by_class: dict[str, list[LabelledRow]] = {}
    for r in rows:
        by_class.setdefault(r.label, []).append(r)
    out = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        parts = _split_one_class(label, by_class[label], val_split, test_split, random.Random(f"{seed}/{label}"))
        for subset, items in zip(("train", "val", "test"), parts):
            out[subset].extend(items)
    return out


def _split_one_class(
    name: str, paths: list[_T], val_frac: float, test_frac: float, rng: random.Random
) -> tuple[list[_T], list[_T], list[_T]]:
    paths = list(paths)
    rng.shuffle(paths)
    n = len(paths)
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    if n - n_val - n_test < 1:
        raise UserError(
            f"class '{name}' has only {n} image(s), too few to split into train, val"
            f"{' and test' if n_test else ''}: add images, or lower data.val_split/data.test_split"
        )
    return paths[n_val + n_test :], paths[:n_val], paths[n_val : n_val + n_test]


def _discover_presplit(root: Path, verify: str, on_bad_image: str) -> DataSplit:
    present = [s for s in SUBSETS if (root / s).is_dir()]
    classes = class_folders(root / "train")
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} needs at least two class folders, found {len(classes)}")
    subsets: dict[str, list[Item]] = {}
    skipped: list[BadImage] = []
    for subset in present:
        names = class_folders(root / subset)
        if names != classes:
            missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            raise UserError(
                f"{root / subset} does not hold the same class folders as {root / 'train'} "
                f"(missing: {missing or 'none'}, extra: {extra or 'none'}): make them match"
            )
        items: list[Item] = []
        for label, name in enumerate(classes):
            good, bad = scan_images(list_images(root / subset / name), verify, on_bad_image)
            skipped += bad
            if not good and subset != "test":
                raise UserError(f"class folder {root / subset / name} has no usable images: add images")
            items += [(p, label) for p in good]
        subsets[subset] = items
    return DataSplit(root, classes, subsets, "presplit", skipped)


def class_folders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder``, sorted: the class names, in label order."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
