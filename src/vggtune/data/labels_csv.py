"""Labels from a CSV file: one row per image, with its path, its class and optionally its subset.

The image column holds a path relative to ``data.root``, or to the CSV's folder, or an absolute one.
Column names are found among common ones (``path``/``filename``/``image``..., ``label``/``labels``/
``class``..., ``split``/``subset``) or given with ``data.path_column``, ``data.label_column`` and
``data.split_column``. A bad row (a missing or unreadable file, an empty label, a path listed twice
with different labels, an unknown subset, a class that only val or test has) is left out with its
line number and reason, or stops the run with ``data.on_bad_image=fail``. A row whose ``drop`` column (if
the CSV has one, as ``vggtune audit``'s ``cleaned_labels.csv`` does) says 1, true or yes is left out and listed.

With ``data.label_delim`` (e.g. ``" "``) a label cell holds several labels, and the task is
multi-label: an image may have any number of them, none included (an empty cell).

Reading is one pass of Python's csv module plus one ``stat`` per row; the image checks run in
:func:`vggtune.data.scan.scan_images`'s thread pool, as for class folders.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vggtune.core.errors import UserError
from vggtune.data.scan import BadImage, scan_images

PATH_COLUMNS = ("path", "filename", "file", "image", "image_path", "fname", "file_name", "name")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
SPLIT_COLUMNS = ("split", "subset")
_SUBSET_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class LabelledRow:
    """One usable row: the CSV line it came from, the image, its class and its subset (None: not given)."""

    line: int
    path: Path
    label: str  # multi-label: the row's labels, sorted, joined by the delimiter
    subset: str | None

    def labels(self, delim: str | None) -> tuple[str, ...]:
        """The row's labels: one, or (with a delimiter) those in the cell, none included."""
        return split_labels(self.label, delim)


def split_labels(cell: str, delim: str | None) -> tuple[str, ...]:
    """The labels of a label cell, sorted and without repeats (all of it without a delimiter)."""
    if delim is None:
        return (cell,)
    parts = cell.split(delim) if delim.strip() else cell.split()  # " ": any run of whitespace
    return tuple(sorted({p.strip() for p in parts if p.strip()}))


def check_delim(delim) -> str | None:
    """``data.label_delim`` if usable: null (one label per row) or a non-empty string."""
    if delim is None:
        return None
    if not isinstance(delim, str) or delim == "" or delim in ("\n", "\r"):
        raise UserError(
            f"data.label_delim must be the character(s) between the labels of a row, or null for one "
            f"label per row; got {delim!r}. In a shell, quote the whole override so that Hydra gets "
            f"the quotes: \"data.label_delim=' '\" or \"data.label_delim=';'\""
        )
    return delim


class Rejects:
    """Rows left out, each as a :class:`BadImage` whose reason starts ``<csv> line N:``; or a UserError at
    the first one with ``on_bad_image=fail``."""

    def __init__(self, csv_path: Path, on_bad_image: str):
        self.csv_path, self.on_bad_image = csv_path, on_bad_image
        self.rows: list[BadImage] = []

    def __call__(self, line: int, where: Path | str, reason: str) -> None:
        if self.on_bad_image == "fail":
            raise UserError(
                f"{self.csv_path} line {line}: {reason}. Fix the row, or pass data.on_bad_image=skip "
                "to leave such rows out"
            )
        self.rows.append(BadImage(Path(where), f"{self.csv_path.name} line {line}: {reason}"))


@dataclass(frozen=True)
class Columns:
    """The CSV's column names for the image path, the label and (optionally) the subset."""

    path: str
    label: str
    split: str | None


def read_labels_csv(
    csv_path: str | Path,
    root: Path,
    path_column: str | None = None,
    label_column: str | None = None,
    split_column: str | None = None,
    verify: str = "header",
    on_bad_image: str = "skip",
    label_delim: str | None = None,
) -> tuple[list[LabelledRow], Rejects]:
    """The usable rows of ``csv_path`` and the rows left out (``label_delim``: several labels a row)."""
    label_delim = check_delim(label_delim)
    csv_path = resolve_csv_path(csv_path, root)
    reject = Rejects(csv_path, on_bad_image)
    if on_bad_image not in ("skip", "fail"):
        raise UserError(f"data.on_bad_image must be one of skip, fail, got {on_bad_image!r}")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        columns = _columns(csv_path, reader.fieldnames or [], path_column, label_column, split_column)
        rows = []
        root_text, folder_text = str(root), str(csv_path.parent)
        drop_column = next((f for f in reader.fieldnames or [] if f.strip().lower() == "drop"), None)
        for record in reader:
            line = reader.line_num
            value = (record.get(columns.path) or "").strip()
            label = (record.get(columns.label) or "").strip()
            if not value:
                reject(line, "", "no image path")
                continue
            path = _find(value, root_text, folder_text)
            if path is None:
                places = str(root) if root == csv_path.parent else f"{root} and {csv_path.parent}"
                reject(line, value, f"no such file (looked in {places})")
                continue
            if drop_column and (record.get(drop_column) or "").strip().lower() in ("1", "true", "yes"):
                reject.rows.append(
                    BadImage(path, f"{csv_path.name} line {line}: marked drop in its {drop_column} column")
                )
                continue
            if label_delim is not None:
                label = label_delim.join(split_labels(label, label_delim))  # empty: an image with no label
            elif not label:
                reject(line, path, "empty label")
                continue
            subset = None
            if columns.split:
                given = (record.get(columns.split) or "").strip()
                subset = _SUBSET_NAMES.get(given.lower())
                if subset is None:
                    reject(line, path, f"{columns.split}={given!r} is not train, val or test")
                    continue
            rows.append(LabelledRow(line, path, label, subset))
    if not rows and not reject.rows:
        raise UserError(f"{csv_path} has a header but no rows: add one row per image ({columns.path},{columns.label})")
    rows = _drop_conflicts(rows, reject)
    _, unusable = scan_images([r.path for r in rows], verify, "skip")
    problems = {b.path: b.reason for b in unusable}
    for r in rows:
        if r.path in problems:
            reject(r.line, r.path, problems[r.path])
    return [r for r in rows if r.path not in problems], reject


def resolve_csv_path(value: str | Path, root: Path | None) -> Path:
    """``data.labels`` as given (``~`` expanded), or relative to ``data.root``; a UserError if neither exists."""
    path = Path(str(value)).expanduser()
    candidates = [path] if path.is_absolute() else [path, *([root / path] if root is not None else [])]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        raise UserError(
            f"data.labels {value}: no such file ({where}): pass the path of a CSV file with a column "
            "for the image path and one for the label"
        )
    return found.resolve()


def _columns(
    csv_path: Path, fields: Sequence[str], path_column: str | None, label_column: str | None, split_column: str | None
) -> Columns:
    if not fields:
        raise UserError(f"{csv_path} is empty: it needs a header row naming a path column and a label column")

    def pick(given: str | None, names: tuple[str, ...], key: str, required: bool) -> str | None:
        if given:
            if given not in fields:
                raise UserError(f"data.{key}={given} is not a column of {csv_path} (its columns: {', '.join(fields)})")
            return given
        lower = {f.strip().lower(): f for f in fields}
        found = next((lower[n] for n in names if n in lower), None)
        if found is None and required:
            raise UserError(
                f"{csv_path} has no {key.split('_')[0]} column (looked for {', '.join(names)}; its "
                f"columns: {', '.join(fields)}): pass data.{key}=<column name>"
            )
        return found

    path = pick(path_column, PATH_COLUMNS, "path_column", True)
    label = pick(label_column, LABEL_COLUMNS, "label_column", True)
    if path == label:
        raise UserError(f"data.path_column and data.label_column are both {path}: name two different columns")
    assert path is not None and label is not None  # pick raises for a required column it does not find
    return Columns(path, label, pick(split_column, SPLIT_COLUMNS, "split_column", False))


def _find(value: str, root: str, csv_folder: str) -> Path | None:
    # os.path on strings: pathlib's resolve() and parsing cost ~0.2 ms a row, most of a 100k-row CSV's time
    value = os.path.expanduser(value)
    candidates = [value] if os.path.isabs(value) else [os.path.join(root, value), os.path.join(csv_folder, value)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    return Path(os.path.normpath(found)) if found is not None else None


def _drop_conflicts(rows: list[LabelledRow], reject: Rejects) -> list[LabelledRow]:
    """A path listed twice with the same label and subset counts once; with another label, every row of it goes."""
    listed: dict[Path, set[tuple[str, str | None]]] = defaultdict(set)
    for r in rows:
        listed[r.path].add((r.label, r.subset))
    kept, counted = [], set()
    for r in rows:
        if len(listed[r.path]) > 1:
            others = sorted({label for label, _ in listed[r.path]} - {r.label})
            reject(
                r.line, r.path, "listed again with another " + (f"label ({', '.join(others)})" if others else "subset")
            )
        elif r.path not in counted:
            counted.add(r.path)
            kept.append(r)
    return kept


def check_classes(
    subsets: dict[str, list[LabelledRow]], reject: Rejects, delim: str | None = None
) -> tuple[list[str], dict[str, list[LabelledRow]]]:
    """The classes (those train has, sorted); rows of val/test with a class train never has are rejected."""
    classes = sorted({label for r in subsets.get("train", []) for label in r.labels(delim)})
    known = set(classes)
    out = {"train": subsets.get("train", [])}
    for subset in ("val", "test"):
        kept = []
        for r in subsets.get(subset, []):
            unknown = [label for label in r.labels(delim) if label not in known]
            if not unknown:
                kept.append(r)
            else:
                kind = "label" if delim is not None else "class"
                reject(r.line, r.path, f"{kind} {unknown[0]!r} is in {subset} but not in train")
        out[subset] = kept
    return classes, out
