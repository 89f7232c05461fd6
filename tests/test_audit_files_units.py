"""What `vggtune audit` writes, from findings built by hand in this process: the CSV files, audit.json,
cleaned_labels.csv under each audit.fix, and report.html (parsed).

tests/test_audit.py runs the whole command on planted data (slow: vectors from a VGG, a head per fold); here the
findings (label issues, pairs, outlier scores, image facts) are given, so that every expected row is known by
construction."""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from vggtune.data.discovery import DataSplit
from vggtune.inspect.audit_report import THUMB, ReportRow, thumbnail_uri, write_report
from vggtune.inspect.duplicates import Pair
from vggtune.inspect.folds import HeadRecipe
from vggtune.inspect.image_facts import ImageFacts, OddRules
from vggtune.inspect.label_issues import LabelIssues
from vggtune.tasks.audit import Settings
from vggtune.tasks.audit_files import Findings, write_findings

CLASSES = ["cat", "dog", "fox"]


def _settings(fix: str = "relabel", relabel_above: float = 0.5, report_rows: int = 50) -> Settings:
    return Settings(
        5, "conv", HeadRecipe(), "lowest_self_confidence", 0.95, fix, relabel_above, OddRules(), report_rows
    )


def _facts(width: int = 40, height: int = 40, grey_std: float = 50.0) -> ImageFacts:
    return ImageFacts("0" * 64, width, height, grey_std, np.zeros(256, np.float32))


def _findings(tmp_path: Path, fix: str = "relabel", report_rows: int = 50) -> Findings:
    """Six images; what each is, is planted:

    0 cat/a train, 1 cat/b train (a dog labelled cat: issue, suggested dog at p=0.8),
    2 dog/c train, 3 dog/d val (an exact copy of 2: a leak), 4 fox/e test (a cat labelled fox: issue,
    suggested cat at p=0.4; 10 x 10 px: tiny), 5 outside the root, train, fox (cleanlab's outlier; a near copy
    of 0 with another label, as similar as an exact copy: a conflict). 0 and 1 are a near pair with no flag."""
    root = tmp_path / "data"
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (0, 0, 200), (90, 90, 90), (250, 250, 0)]
    names = ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "fox/e.png"]
    paths = [root / n for n in names] + [tmp_path / "elsewhere" / "f.png"]
    for p, colour in zip(paths, colours):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10) if p.name == "e.png" else (120, 60), colour).save(p)
    labels = [0, 0, 1, 1, 2, 2]
    subsets = ["train", "train", "train", "val", "test", "train"]
    items = list(zip(paths, labels, subsets))
    split = DataSplit(root, CLASSES, {}, "folders")
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.1, 0.8, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.8, 0.1],
            [0.4, 0.3, 0.3],
            [0.2, 0.1, 0.7],
        ]
    )
    quality = probs[np.arange(6), labels]
    issues = LabelIssues(np.array([4, 1]), quality, [int(i) for i in probs.argmax(1)])
    pairs = [Pair(0, 1, "near", 0.97), Pair(0, 5, "near", 1.0), Pair(2, 3, "exact", 1.0)]
    ood = np.array([0.9, 0.8, 0.7, 0.7, 0.5, 0.1])
    outlier = np.array([False, False, False, False, False, True])
    facts = [_facts() for _ in range(6)]
    facts[4] = _facts(10, 10)
    return Findings(split, items, probs, issues, pairs, ood, outlier, facts, _settings(fix, report_rows=report_rows))


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _summary() -> dict:
    return {
        "images": 6,
        "classes": CLASSES,
        "data_root": "/somewhere/pets",
        "network": "vgg11 (weights none)",
        "vectors": "conv",
        "folds": 5,
        "head": "logistic regression, C=1",
        "near_duplicate_threshold": 0.95,
        "out_of_fold_accuracy": 0.5,
    }


@pytest.fixture
def written(tmp_path) -> tuple[Findings, Path, dict, dict]:
    f = _findings(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    summary = _summary()
    files = write_findings(f, run, summary)
    return f, run, summary, files


def test_each_csv_lists_the_planted_findings_most_important_first(written, tmp_path):
    f, run, summary, files = written
    images = _csv(run / "images.csv")
    outside = (tmp_path / "elsewhere" / "f.png").as_posix()
    assert [r["path"] for r in images] == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "fox/e.png", outside]
    assert [r["label"] for r in images] == ["cat", "cat", "dog", "dog", "fox", "fox"]

    issues = _csv(run / "label_issues.csv")
    assert [(r["rank"], r["path"], r["given"], r["suggested"]) for r in issues] == [
        ("1", "fox/e.png", "fox", "cat"),
        ("2", "cat/b.png", "cat", "dog"),
    ]
    assert [float(r["suggested_prob"]) for r in issues] == [0.4, 0.8]
    assert [float(r["score"]) for r in issues] == [0.3, 0.1]  # the given label's probability

    pairs = _csv(run / "duplicates.csv")
    # flagged pairs first (at equal similarity, the exact one before the near one), then the rest by similarity
    assert [(r["path_a"], r["path_b"], r["kind"], r["leak"], r["label_conflict"]) for r in pairs] == [
        ("dog/c.png", "dog/d.png", "exact", "1", "0"),
        ("cat/a.png", outside, "near", "0", "1"),
        ("cat/a.png", "cat/b.png", "near", "0", "0"),
    ]

    outliers = _csv(run / "outliers.csv")
    # lowest OOD score first; only images with a reason
    assert [r["path"] for r in outliers] == [outside, "fox/e.png"]
    assert outliers[0]["reasons"] == "far from every class (cleanlab out-of-distribution score)"
    assert outliers[1]["reasons"] == "tiny (10x10 px)" and (outliers[1]["width"], outliers[1]["height"]) == ("10", "10")

    classes = _csv(run / "classes.csv")
    assert [
        (r["class"], r["images"], r["suspected_errors"], r["in_duplicate_pairs"], r["outliers"]) for r in classes
    ] == [
        ("cat", "2", "1", "2", "0"),
        ("dog", "2", "0", "2", "0"),
        ("fox", "2", "1", "1", "2"),
    ]

    assert summary["counts"] == {
        "label_issues": 2,
        "duplicate_pairs": 3,
        "exact_pairs": 1,
        "leaks": 1,
        "label_conflicts": 1,
        "outliers": 2,
        "relabelled": 2,
        "dropped": 1,
    }
    assert summary["per_class"]["fox"] == {"images": 2, "suspected_errors": 1, "in_duplicate_pairs": 1, "outliers": 2}
    assert json.loads((run / "audit.json").read_text()) == summary
    assert set(files) == {p.name for p in run.iterdir()}  # each file written is described, and only those
    assert files["label_issues.csv"].startswith("2 likely wrong labels")


@pytest.mark.parametrize(
    "fix, labels, dropped",
    [
        # relabel: both issues take the suggestion; the val copy of a train image is dropped
        ("relabel", ["cat", "dog", "dog", "dog", "cat", "fox"], [3]),
        ("drop", ["cat", "cat", "dog", "dog", "fox", "fox"], [1, 3, 4]),
        # auto at 0.5: image 1's suggestion (p=0.8) is taken, image 4's (p=0.4) is not: dropped
        ("auto", ["cat", "dog", "dog", "dog", "fox", "fox"], [3, 4]),
    ],
)
def test_cleaned_labels_follow_audit_fix(tmp_path, fix, labels, dropped):
    f = _findings(tmp_path, fix=fix)
    run = tmp_path / "run"
    run.mkdir()
    summary = _summary()
    write_findings(f, run, summary)
    rows = _csv(run / "cleaned_labels.csv")
    assert [r["label"] for r in rows] == labels
    assert [i for i, r in enumerate(rows) if r["drop"] == "1"] == dropped
    assert [r["given_label"] for r in rows] == ["cat", "cat", "dog", "dog", "fox", "fox"]
    assert [r["subset"] for r in rows] == ["train", "train", "train", "val", "test", "train"]
    assert rows[3]["reason"] == "exact copy of dog/c.png (train)"
    assert rows[0]["reason"] == "" and rows[1]["reason"].startswith("label issue (score 0.1, suggested dog)")
    if fix == "auto":
        assert rows[4]["reason"].endswith("dropped: the suggestion's probability 0.40 < 0.5")
    relabelled = sum(a != b for a, b in zip(labels, ["cat", "cat", "dog", "dog", "fox", "fox"]))
    assert summary["counts"]["relabelled"] == relabelled and summary["counts"]["dropped"] == len(dropped)


def test_an_issue_whose_suggestion_is_its_own_label_is_not_counted_as_relabelled(tmp_path):
    f = _findings(tmp_path)
    f.issues.suggested[1] = 0  # suggested: the label it has
    run = tmp_path / "run"
    run.mkdir()
    summary = _summary()
    write_findings(f, run, summary)
    rows = _csv(run / "cleaned_labels.csv")
    assert rows[1]["label"] == "cat" and rows[1]["drop"] == "0"
    assert summary["counts"]["relabelled"] == 1  # image 4 only


def test_several_labels_per_image_are_joined_and_their_suggestion_has_the_mean_probability(tmp_path):
    root = tmp_path / "data"
    split = DataSplit(root, CLASSES, {}, "csv", label_delim="|")
    items = [(root / "a.png", (0, 2), "train"), (root / "b.png", (), "train"), (root / "c.png", (1,), "val")]
    probs = np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.1, 0.8, 0.1]])
    issues = LabelIssues(np.array([1]), np.array([0.9, 0.1, 0.8]), [(0, 2), (), (1,)])
    f = Findings(split, items, probs, issues, [], np.ones(3), np.zeros(3, bool), [_facts()] * 3, _settings())
    assert f.label(0) == "cat|fox" and f.label(1) == "" and f.suggested(0) == "cat|fox"
    assert f.suggested_prob(0) == pytest.approx((0.9 + 0.6) / 2)
    assert f.suggested_prob(1) == pytest.approx(1 - 0.3)  # no label suggested: the likeliest one is absent
    run = tmp_path / "run"
    run.mkdir()
    summary = {**_summary(), "images": 3}
    write_findings(f, run, summary)
    assert [r["label"] for r in _csv(run / "images.csv")] == ["cat|fox", "", "dog"]
    assert summary["per_class"] == {
        "cat": {"images": 1, "suspected_errors": 0, "in_duplicate_pairs": 0, "outliers": 0},
        "dog": {"images": 1, "suspected_errors": 0, "in_duplicate_pairs": 0, "outliers": 0},
        "fox": {"images": 1, "suspected_errors": 0, "in_duplicate_pairs": 0, "outliers": 0},
    }
    assert summary["counts"]["label_issues"] == 1 and summary["counts"]["outliers"] == 0


class _Page(HTMLParser):
    """What the report shows: the tab buttons, and per section its rows (data-path), images, links and text."""

    def __init__(self):
        super().__init__()
        self.tabs: list[tuple[str, str]] = []
        self.sections: dict[str, dict] = {}
        self._section: str | None = None
        self._tab: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "button" and a.get("role") == "tab":
            self._tab = a["data-tab"]
        elif tag == "section":
            self._section = a["id"]
            self.sections[self._section] = {"rows": [], "images": [], "links": [], "text": [], "cells": []}
        elif self._section:
            s = self.sections[self._section]
            if tag == "div" and "data-path" in a:
                s["rows"].append(a["data-path"])
            elif tag == "div" and "data-paths" in a:
                s["rows"].append(a["data-paths"])
            elif tag == "img":
                s["images"].append((a["src"], a["alt"]))
            elif tag == "a":
                s["links"].append(a["href"])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._tab is not None:
            self.tabs.append((self._tab, data))
            self._tab = None
        elif self._section:
            self.sections[self._section]["text"].append(data)
        self.text.append(data)


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_the_report_has_a_tab_per_finding_with_rows_in_their_order_thumbnails_and_file_links(written, tmp_path):
    f, run, summary, _ = written
    page = _page(run / "report.html")
    assert page.tabs == [
        ("issues", "Label issues (2)"),
        ("duplicates", "Duplicates (3)"),
        ("outliers", "Outliers (2)"),
        ("classes", "Per class"),
    ]
    assert list(page.sections) == ["issues", "duplicates", "outliers", "classes"]
    outside = (tmp_path / "elsewhere" / "f.png").as_posix()
    issues = page.sections["issues"]
    assert issues["rows"] == ["fox/e.png", "cat/b.png"]  # lowest label quality first, as label_issues.csv
    note = next(t for t in issues["text"] if t.startswith("suggested"))
    assert note == "suggested cat (p=0.40), score 0.3"
    # each row links its image file (the thumbnail and the path), and the link opens that very file
    files = {Path(unquote(urlparse(h).path)) for h in issues["links"]}
    assert files == {tmp_path / "data" / "fox" / "e.png", tmp_path / "data" / "cat" / "b.png"}
    assert all(h.startswith("file://") for h in issues["links"])
    src, alt = issues["images"][0]
    assert alt == "fox/e.png" and src.startswith("data:image/jpeg;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert thumb.format == "JPEG" and thumb.size == (10, 10)  # smaller than THUMB: not enlarged
    assert np.asarray(thumb.convert("RGB")).mean(axis=(0, 1)) == pytest.approx([90, 90, 90], abs=4)

    pairs = page.sections["duplicates"]
    # flagged first, then by similarity (ties in the order found: unlike duplicates.csv, not exact first)
    assert pairs["rows"] == [f"cat/a.png {outside}", "dog/c.png dog/d.png", "cat/a.png cat/b.png"]
    notes = [t for t in pairs["text"] if t.startswith(("exact", "near"))]
    assert notes == [
        "near, cosine 1.000: different labels",
        "exact, cosine 1.000: leak across subsets",
        "near, cosine 0.970",
    ]
    assert page.sections["outliers"]["rows"] == [outside, "fox/e.png"]
    about = next(t for t in page.text if t.startswith("6 images"))
    assert "3 classes, from /somewhere/pets" in about and "5 folds" in about and "accuracy 0.500" in about
    assert "first 2, 3, 2 rows" in about
    cells = [t for t in page.sections["classes"]["text"] if t.strip()]
    assert cells[5:] == ["cat", "2", "1", "2", "0", "dog", "2", "0", "2", "0", "fox", "2", "1", "1", "2"]


def test_the_report_shows_the_first_report_rows_of_each_list(tmp_path):
    f = _findings(tmp_path, report_rows=1)
    run = tmp_path / "run"
    run.mkdir()
    summary = _summary()
    write_findings(f, run, summary)
    page = _page(run / "report.html")
    assert page.sections["issues"]["rows"] == ["fox/e.png"]
    assert page.sections["duplicates"]["rows"] == [f"cat/a.png {(tmp_path / 'elsewhere' / 'f.png').as_posix()}"]
    assert len(page.sections["outliers"]["rows"]) == 1
    assert ("issues", "Label issues (2)") in page.tabs  # the count is of every finding, not of the rows shown
    assert len(_csv(run / "label_issues.csv")) == 2


def test_an_empty_report_says_so_and_names_are_escaped(tmp_path):
    summary = {
        **_summary(),
        "data_root": str(tmp_path / "<b>pets"),
        "counts": {"label_issues": 0, "duplicate_pairs": 0, "outliers": 0},
        "per_class": {"a<b": {"images": 3, "suspected_errors": 0, "in_duplicate_pairs": 0, "outliers": 0}},
    }
    write_report(tmp_path / "report.html", summary, [], [], [])
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<b>pets" not in text and "&lt;b&gt;pets" in text
    page = _page(tmp_path / "report.html")
    assert "vggtune audit: <b>pets" in page.text  # the title, decoded: the data folder's name
    assert [t for t in page.sections["issues"]["text"] if t.strip()] == ["No likely label errors found."]
    assert [t for t in page.sections["duplicates"]["text"] if t.strip()] == [
        "No exact or near copies at this threshold."
    ]
    assert [t for t in page.sections["outliers"]["text"] if t.strip()] == ["No outliers or odd images found."]
    assert "a<b" in page.sections["classes"]["text"]


def test_a_file_that_cannot_be_decoded_keeps_its_row_without_a_picture(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 150), (10, 20, 30)).save(big)
    assert thumbnail_uri(broken) == ""
    thumb = Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(big).split(",", 1)[1])))
    assert thumb.size == (THUMB, THUMB // 2)  # the longer side at THUMB, the aspect kept
    summary = {**_summary(), "counts": {"label_issues": 1, "duplicate_pairs": 0, "outliers": 0}, "per_class": {}}
    row = ReportRow(broken, "broken.jpg", "train", "cat", "suggested dog")
    write_report(tmp_path / "report.html", summary, [row], [], [])
    page = _page(tmp_path / "report.html")
    assert page.sections["issues"]["rows"] == ["broken.jpg"]
    assert page.sections["issues"]["images"] == [("", "broken.jpg")]


class _Notes(HTMLParser):
    """Each pair's note with the classes a browser gives it: those of the first ``class`` attribute (a second is ignored)."""

    def __init__(self):
        super().__init__()
        self.notes: list[tuple[list[str], str]] = []
        self._classes: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        classes = next((v.split() for k, v in attrs if k == "class"), [])
        self._classes = classes if tag == "div" and "what" in classes else None

    def handle_data(self, data):
        if self._classes is not None:
            self.notes.append((self._classes, data))
            self._classes = None


def test_a_flagged_pair_is_marked_and_a_plain_one_is_not(tmp_path):
    a = ReportRow(tmp_path / "a.png", "a.png", "train", "cat", "")
    b = replace(a, file=tmp_path / "b.png", shown="b.png")
    summary = {**_summary(), "counts": {"label_issues": 0, "duplicate_pairs": 2, "outliers": 0}, "per_class": {}}
    write_report(tmp_path / "report.html", summary, [], [(a, b, "near, cosine 0.990"), (a, b, "exact: leak")], [])
    parser = _Notes()
    parser.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert parser.notes == [(["what"], "near, cosine 0.990"), (["what", "flag"], "exact: leak")]
    assert ".flag {" in (tmp_path / "report.html").read_text(encoding="utf-8")  # the style it gets
