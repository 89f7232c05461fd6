"""Labels from a CSV: columns found or named, paths from three places, the CSV's own split or a seeded
one, and every bad row left out with its line number and reason (or the run stopped at it)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli_here

from vggtune.core.errors import UserError
from vggtune.data.discovery import discover, labelled_images


@pytest.fixture()
def images(tmp_path):
    """Three classes of ten images, flattened into one folder, plus the class of each file."""
    folders = make_class_folders(tmp_path / "folders", classes=3, per_class=10)
    flat = tmp_path / "data" / "images"
    flat.mkdir(parents=True)
    labels = {}
    for f in sorted(folders.rglob("img_*")):
        name = f"{f.parent.name}_{f.name}"
        shutil.copy(f, flat / name)
        labels[name] = f.parent.name
    return flat, labels


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_columns_are_found_and_paths_resolve_from_root_the_csv_folder_or_absolute(images, tmp_path):
    flat, labels = images
    names = sorted(labels)
    rows = [
        [f"images/{n}" if i % 3 == 0 else (str(flat / n) if i % 3 == 1 else n), labels[n]] for i, n in enumerate(names)
    ]
    # data.root is the images folder; "images/x" is relative to the CSV's folder, x to the root
    csv_path = _write(tmp_path / "data" / "labels.csv", ["Filename", "Class"], rows)
    split = discover(flat, 0.2, 0.1, seed=1, labels=csv_path)
    assert split.classes == ["checks", "hstripes", "vstripes"] and split.layout == "csv"
    assert not split.skipped
    every = {p for items in split.subsets.values() for p, _ in items}
    assert every == {(flat / n).resolve() for n in names}
    for items in split.subsets.values():
        for p, label in items:
            assert split.classes[label] == labels[p.name]
    # the seeded split is stratified as for class folders: 10 per class -> 7 train, 2 val, 1 test
    counts = split.counts()
    assert all(counts["train"][c] == 7 and counts["val"][c] == 2 and counts["test"][c] == 1 for c in split.classes)
    assert discover(flat, 0.2, 0.1, seed=1, labels=csv_path).subsets == split.subsets  # seeded
    # the column names can be given
    named = _write(tmp_path / "named.csv", ["a", "file", "b"], [[labels[n], n, "x"] for n in names])
    split = discover(flat, 0.2, 0.1, labels=named, columns={"path_column": "file", "label_column": "a"})
    assert sum(len(v) for v in split.subsets.values()) == 30


def test_a_split_column_overrides_the_seeded_split(images, tmp_path):
    flat, labels = images
    names = sorted(labels)
    subset_of = {n: ("valid" if i % 5 == 0 else "TRAIN") for i, n in enumerate(names)}
    csv_path = _write(tmp_path / "l.csv", ["image", "label", "split"], [[n, labels[n], subset_of[n]] for n in names])
    split = discover(flat, 0.2, 0.1, labels=csv_path)
    assert set(split.subsets) == {"train", "val"}
    assert {p.name for p, _ in split.subsets["val"]} == {n for n in names if subset_of[n] == "valid"}


def test_bad_rows_are_left_out_with_their_line_and_reason(images, tmp_path):
    flat, labels = images
    names = sorted(labels)
    broken = flat / "broken.jpg"
    broken.write_bytes((flat / next(n for n in names if n.endswith(".jpg"))).read_bytes()[:200])  # cut off
    shutil.copy(flat / names[0], flat / "extra.png")
    rows = [[n, labels[n], "train" if i % 4 else "val"] for i, n in enumerate(names)]
    bad = [
        ["missing.png", "checks", "train"],  # no such file
        [names[1], "", "train"],  # empty label (names[1] is listed again below)
        ["broken.jpg", "checks", "train"],  # unreadable
        [names[2], "vstripes", "train"],  # names[2] again, another label: both rows go
        [names[3], labels[names[3]], "holdout"],  # not a subset
        ["extra.png", "circles", "val"],  # a class train never has
        [names[5], labels[names[5]], rows[5][2]],  # the same row twice: counted once, not an error
    ]
    csv_path = _write(tmp_path / "l.csv", ["path", "label", "split"], rows + bad)
    first_bad = len(rows) + 2  # line 1 is the header
    split = discover(flat, 0.2, 0.1, labels=csv_path)
    reasons = {b.reason for b in split.skipped}
    assert f"l.csv line {first_bad}: no such file (looked in {flat} and {tmp_path})" in reasons
    assert Path("missing.png") in {b.path for b in split.skipped}
    assert f"l.csv line {first_bad + 1}: empty label" in reasons
    assert any(r.startswith(f"l.csv line {first_bad + 2}: ") for r in reasons)  # the unreadable image
    assert labels[names[2]] != "vstripes"  # so that its second row conflicts
    assert {
        "l.csv line 4: listed again with another label (vstripes)",
        f"l.csv line {first_bad + 3}: listed again with another label ({labels[names[2]]})",
    } <= reasons
    assert f"l.csv line {first_bad + 4}: split='holdout' is not train, val or test" in reasons
    assert f"l.csv line {first_bad + 5}: class 'circles' is in val but not in train" in reasons
    kept = [p.name for items in split.subsets.values() for p, _ in items]
    assert Counter(kept)[names[5]] == 1 and "broken.jpg" not in kept and "missing.png" not in kept
    # on_bad_image=fail stops at the first bad row, naming it
    with pytest.raises(UserError, match=rf"l\.csv line {first_bad}: no such file .*on_bad_image=skip"):
        discover(flat, 0.2, 0.1, labels=csv_path, on_bad_image="fail")


@pytest.mark.parametrize(
    "header, columns, needle",
    [
        (["path", "kind"], {}, "has no label column (looked for label, labels"),
        (["path", "label"], {"label_column": "species"}, "data.label_column=species is not a column"),
        (["pic", "label"], {}, "has no path column"),
    ],
)
def test_a_csv_without_the_columns_says_which_it_has(images, tmp_path, header, columns, needle):
    flat, labels = images
    csv_path = _write(tmp_path / "l.csv", header, [[n, labels[n]] for n in sorted(labels)])
    with pytest.raises(UserError, match=re.escape(needle)) as e:
        discover(flat, 0.2, 0.1, labels=csv_path, columns=columns)
    assert "its columns: " + ", ".join(header) in str(e.value) or "is not a column" in str(e.value)


def test_labelled_images_reads_every_row_for_embed(images, tmp_path):
    flat, labels = images
    csv_path = _write(tmp_path / "l.csv", ["path", "label"], [[n, labels[n]] for n in sorted(labels)])
    split = labelled_images(flat, labels=csv_path)
    assert list(split.subsets) == ["all"] and len(split.subsets["all"]) == 30


@pytest.mark.slow
def test_train_and_eval_from_a_csv_without_data_root(images, tmp_path):
    """The command a user types: ``vggtune train data.labels=labels.csv`` (paths relative to the CSV's folder)."""
    flat, labels = images
    names = sorted(labels)
    csv_path = _write(
        flat.parent / "labels.csv",
        ["filename", "label"],
        [[f"images/{n}", labels[n]] for n in names] + [["images/gone.png", "checks"]],
    )
    run_dir = tmp_path / "run"
    proc = run_cli_here("train", "data.labels=labels.csv", *TINY, f"hydra.run.dir={run_dir}", cwd=flat.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(csv), 3 classes: checks, hstripes, vstripes" in proc.stdout + proc.stderr
    with open(run_dir / "split.csv", newline="") as f:
        split_rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in split_rows) == names
    assert all(labels[Path(r["path"]).name] == r["class"] for r in split_rows)
    assert "images/gone.png\tlabels.csv line 32: no such file" in (run_dir / "skipped_images.txt").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["data"]["root"] == str(flat.parent.resolve())
    # eval on the CSV's rows with the trained checkpoint
    out = tmp_path / "eval"
    proc = run_cli_here(
        "eval",
        f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
        f"data.labels={csv_path}",
        "data.num_workers=0",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["data"]["images"] == 30
    shutil.rmtree(run_dir / "checkpoints")


def test_a_labels_file_that_does_not_exist_is_one_line_and_nothing_is_made(tmp_path):
    proc = run_cli_here("train", "data.labels=nowhere.csv", *TINY, cwd=tmp_path)
    assert_one_line_error(proc, "data.labels", "nowhere.csv", "no such file")
    assert not (tmp_path / "outputs").exists()
