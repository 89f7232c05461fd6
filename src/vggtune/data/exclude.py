"""``data.exclude``: leave listed images out of a run, said and listed, never deleted.

The list is a CSV file with a path column (``vggtune audit``'s ``label_issues.csv``, ``outliers.csv``, or any
file whose header has one of :data:`~vggtune.data.labels_csv.PATH_COLUMNS`), a text file of one path a line,
or a list of paths on the command line (``data.exclude=[cats/a.jpg,dogs/b.jpg]``). Relative paths are taken
from ``data.root``, or from the list file's folder. The images are taken out after the split, so the
other images stay in the subsets they had; each one is listed in ``skipped_images.txt`` with the reason.
A listed path that is not an image of the data set stops the run: a typo must not exclude nothing.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from vggtune.core.errors import UserError
from vggtune.data.discovery import DataSplit
from vggtune.data.labels_csv import PATH_COLUMNS
from vggtune.data.scan import BadImage

log = logging.getLogger(__name__)


def read_exclude(value, root: Path) -> tuple[list[Path], str]:
    """The paths ``data.exclude`` names, made absolute, and a few words on where they came from."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return [], ""
    if isinstance(value, str):
        given = Path(value).expanduser()
        found = (
            given
            if given.is_absolute()
            else next((p for p in (Path.cwd() / given, root / given) if p.is_file()), given)
        )
        if found.suffix.lower() in (".csv", ".txt", ".tsv"):
            if not found.is_file():
                raise UserError(
                    f"data.exclude {value}: no such file (looked in {Path.cwd()} and {root}): pass a CSV "
                    "with a path column, a text file of paths, or a list of paths"
                )
            return _read_list_file(found, root), found.name
        value = [value]  # one image path
    if not isinstance(value, Sequence):
        raise UserError(
            f"data.exclude={value!r}: pass a CSV file with a path column, a text file of paths, "
            "or a list of paths, e.g. data.exclude=[cats/a.jpg,dogs/b.jpg]"
        )
    return [_absolute(str(v), root, root) for v in value], "the command line"


def _read_list_file(path: Path, root: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        if path.suffix.lower() == ".txt":
            lines = [line.split("\t")[0].strip() for line in f]
            return [_absolute(v, root, path.parent) for v in lines if v and not v.startswith("#")]
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        lower = {name.strip().lower(): name for name in reader.fieldnames or []}
        column = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
        if column is None:
            raise UserError(
                f"data.exclude {path} has no path column (looked for {', '.join(PATH_COLUMNS)}; its "
                f"columns: {', '.join(reader.fieldnames or []) or 'none'}): name one 'path'"
            )
        return [_absolute(r[column].strip(), root, path.parent) for r in reader if (r.get(column) or "").strip()]


def _absolute(value: str, root: Path, folder: Path) -> Path:
    """A listed path as an absolute, normalised one: as given, or under ``root``, or under the list's folder."""
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return Path(os.path.normpath(value))
    candidates = [os.path.join(root, value), os.path.join(folder, value)]
    return Path(os.path.normpath(next((c for c in candidates if os.path.exists(c)), candidates[0])))


def apply_exclude(split: DataSplit, value) -> DataSplit:
    """``split`` without the images ``data.exclude`` lists; they join ``split.skipped`` with the reason."""
    listed, source = read_exclude(value, split.root)
    if not listed:
        return split
    known = {Path(os.path.normpath(p)) for items in split.subsets.values() for p, _ in items}
    already = {Path(os.path.normpath(b.path)) for b in split.skipped}  # bad files: out already, not an error
    unknown = [p for p in listed if p not in known and p not in already]
    if unknown:
        raise UserError(
            f"data.exclude ({source}) lists {len(unknown)} path(s) that are not images of the data set "
            f"{split.root}, first {unknown[0]}: fix or remove them (paths are relative to data.root)"
        )
    out = set(listed) & known
    subsets, counts = {}, {}
    for subset, items in split.subsets.items():
        subsets[subset] = [(p, label) for p, label in items if Path(os.path.normpath(p)) not in out]
        counts[subset] = len(items) - len(subsets[subset])
    _check_classes_left(split, subsets)
    skipped = [*split.skipped, *(BadImage(p, f"left out by data.exclude ({source})") for p in sorted(out))]
    log.info(
        "data.exclude: left out %d image(s) listed in %s (%s); they are in skipped_images.txt",
        len(out),
        source,
        ", ".join(f"{s} {n}" for s, n in counts.items()),
    )
    return DataSplit(split.root, split.classes, subsets, split.layout, skipped, split.label_delim)


def _check_classes_left(split: DataSplit, subsets: dict) -> None:
    """Every class keeps a training image (single-label): a class with none cannot be learnt."""
    if split.multilabel or "train" not in subsets:
        return
    left = {label for _, label in subsets["train"]}
    gone = [name for i, name in enumerate(split.classes) if i not in left]
    if gone:
        raise UserError(
            f"data.exclude leaves class '{gone[0]}' with no training image: exclude fewer of its "
            "images, or remove the class"
        )
