"""`vggtune audit`: a planted wrong label and a planted cross-split copy are found; `data.exclude` leaves out
exactly the listed files; the report renders in Chromium; bad input gets one line."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli_here
from PIL import Image

pytest.importorskip("cleanlab")
AUDIT = ["model=vgg11", "model.weights=none", "data.image_size=32", "data.num_workers=0", "device=cpu"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


def make_colour_folders(root, per_class: int = 16, size: int = 48, seed: int = 0):
    """Class folders of noisy images in one colour each, with a lighter or darker patch: classes that even a
    random-init VGG's vectors separate."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.array(colour) + rng.normal(0, 20, (size, size, 3))
            top, left = rng.integers(0, size // 2, 2)  # a patch in its own place: what tells two images apart
            pixels[top : top + size // 3, left : left + size // 3] += rng.choice([-40, 40])
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Class folders listed in a labels CSV with its own split; one training image's label is wrong (a red
    image labelled green), one training image has an exact copy in val and one a resized JPEG copy in val.
    Returns (data folder, the wrong row's path, the exact copy pair, the resized pair)."""
    root = make_colour_folders(tmp_path_factory.mktemp("planted") / "data")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for k, image in enumerate(sorted(folder.iterdir())):
            rows.append([image.relative_to(root).as_posix(), folder.name, "val" if k % 4 == 3 else "train"])
    wrong = "red/img_002.png"
    rows = [[p, "green" if p == wrong else label, s] for p, label, s in rows]
    shutil.copy(root / "blue/img_004.png", root / "blue/copy_in_val.png")
    with Image.open(root / "green/img_006.png") as im:
        im.resize((40, 40), Image.BILINEAR).save(root / "green/resized_in_val.jpg", quality=90)
    rows += [["blue/copy_in_val.png", "blue", "val"], ["green/resized_in_val.jpg", "green", "val"]]
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "subset"], *rows])
    return root, wrong, ("blue/img_004.png", "blue/copy_in_val.png"), ("green/img_006.png", "green/resized_in_val.jpg")


@pytest.fixture(scope="module")
def audit_run(planted, tmp_path_factory):
    root = planted[0]
    work = tmp_path_factory.mktemp("audit")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    proc = run_cli_here(
        "audit",
        f"data.labels={root / 'labels.csv'}",
        *AUDIT,
        "audit.fix=auto",
        f"data.cache_dir={work / 'cache'}",
        f"hydra.run.dir={work / 'run'}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # no file of the user's touched
    return work / "run", proc


@pytest.mark.slow
def test_the_planted_wrong_label_is_found_with_the_right_suggestion(audit_run, planted):
    run_dir, proc = audit_run
    _, wrong, _, _ = planted
    issues = _rows(run_dir / "label_issues.csv")
    found = next(r for r in issues if r["path"] == wrong)
    assert (found["given"], found["suggested"], found["subset"]) == ("green", "red", "train")
    assert int(found["rank"]) <= 3 and len(issues) <= 6  # near the top, among few
    scores = [float(r["score"]) for r in issues]
    assert scores == sorted(scores) and 0 <= float(found["score"]) < 0.5
    probs = np.load(run_dir / "pred_probs.npy")
    images = _rows(run_dir / "images.csv")
    assert probs.shape == (len(images), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    summary = json.loads((run_dir / "audit.json").read_text())
    assert summary["folds"] == 5 and summary["vectors"] == "conv" and summary["vector_size"] == 512
    assert summary["head"] == "logistic regression, C=1" and "vgg11" in summary["network"]
    assert "5 folds, a logistic regression (C=1) each on the conv vectors" in proc.stdout


@pytest.mark.slow
def test_the_planted_copies_across_subsets_are_found_as_leaks(audit_run, planted):
    run_dir, _ = audit_run
    _, _, exact, resized = planted
    pairs = {(r["path_a"], r["path_b"]): r for r in _rows(run_dir / "duplicates.csv")}
    assert pairs[exact]["kind"] == "exact" and pairs[exact]["leak"] == "1" and pairs[exact]["label_conflict"] == "0"
    assert pairs[resized]["kind"] == "near" and pairs[resized]["leak"] == "1"
    cleaned = {r["path"]: r for r in _rows(run_dir / "cleaned_labels.csv")}
    assert cleaned[exact[1]]["drop"] == "1" and cleaned[exact[0]]["drop"] == "0"  # the val copy goes, not train's


def test_fix_auto_relabels_confident_suggestions_and_drops_unsure_ones(audit_run, planted):
    run_dir, _ = audit_run
    root, _, exact, _ = planted
    cleaned = {r["path"]: r for r in _rows(run_dir / "cleaned_labels.csv")}
    assert len(cleaned) == len(_rows(root / "labels.csv"))
    issues = _rows(run_dir / "label_issues.csv")
    for issue in issues:
        row = cleaned[issue["path"]]
        if issue["path"] == exact[1]:
            continue  # dropped as a copy whatever its label
        if float(issue["suggested_prob"]) >= 0.9:  # audit.relabel_above's default
            assert (row["label"], row["drop"]) == (issue["suggested"], "0")
        else:
            assert (row["label"], row["drop"]) == (issue["given"], "1") and "dropped" in row["reason"]
    flagged = {r["path"] for r in issues}
    assert all(
        r["drop"] == "0" and r["label"] == r["given_label"] for p, r in cleaned.items() if p not in flagged | {exact[1]}
    )
    summary = json.loads((run_dir / "audit.json").read_text())
    assert (summary["fix"], summary["relabel_above"]) == ("auto", 0.9)


@pytest.mark.slow
def test_cleaned_labels_relabel_the_wrong_row_by_default_and_train_reads_them_as_they_are(planted, tmp_path):
    root, wrong, exact, _ = planted
    run_dir = tmp_path / "audit"
    proc = run_cli_here(
        "audit",
        f"data.labels={root / 'labels.csv'}",
        *AUDIT,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "audit.json").read_text())["fix"] == "relabel"  # the default
    cleaned = {r["path"]: r for r in _rows(run_dir / "cleaned_labels.csv")}
    assert (cleaned[wrong]["label"], cleaned[wrong]["given_label"], cleaned[wrong]["drop"]) == ("red", "green", "0")
    proc = run_cli_here(
        "train",
        f"data.root={root}",
        f"data.labels={run_dir / 'cleaned_labels.csv'}",
        *TINY,
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = {r["path"]: r for r in _rows(tmp_path / "run" / "split.csv")}
    assert split[wrong]["class"] == "red" and exact[1] not in split
    assert exact[1] in (tmp_path / "run" / "skipped_images.txt").read_text()


@pytest.mark.slow
def test_data_exclude_leaves_out_exactly_the_listed_files_and_says_how_many(tiny_data, tmp_path):
    listed = ["checks/img_001.jpg", "hstripes/img_004.png"]
    (tmp_path / "out.csv").write_text("rank,path\n" + "".join(f"{k},{p}\n" for k, p in enumerate(listed)))
    runs = {}
    for name, extra in (("all", []), ("excluded", [f"data.exclude={tmp_path / 'out.csv'}"])):
        proc = run_cli_here(
            "train",
            f"data.root={tiny_data}",
            *TINY,
            "+trainer.limit_train_batches=1",
            "logger=csv",
            *extra,
            f"hydra.run.dir={tmp_path / name}",
            cwd=tmp_path,
        )
        runs[name] = (proc, {r["path"]: r for r in _rows(tmp_path / name / "split.csv")})
    (_, everything), (proc, kept) = runs["all"], runs["excluded"]
    assert set(everything) - set(kept) == set(listed)
    assert all(kept[p] == everything[p] for p in kept)  # the others keep their subsets
    skipped = (tmp_path / "excluded" / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == sorted(str(tiny_data / p) for p in listed)
    assert "left out 2 image(s)" in proc.stdout + proc.stderr


def test_an_unknown_path_in_data_exclude_is_one_line(tiny_data, tmp_path):
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "data.exclude=[checks/no_such.png]",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "data.exclude", "checks/no_such.png")
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "data.exclude=missing_issues.csv",
        f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "data.exclude missing_issues.csv: no such file")


def test_a_class_with_fewer_images_than_folds_is_one_line(tmp_path):
    data = make_class_folders(tmp_path / "few", classes=2, per_class=4)
    proc = run_cli_here(
        "audit", f"data.root={data}", *AUDIT, "data.test_split=0", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "fewer than audit.folds=5", "lower audit.folds")


def test_a_checkpoint_of_other_classes_is_one_line(tiny_ckpt, tmp_path):
    data = make_class_folders(tmp_path / "other", classes=2, per_class=10, seed=1)
    (data / "checks").rename(data / "cats")
    proc = run_cli_here(
        "audit",
        f"ckpt={tiny_ckpt}",
        f"data.root={data}",
        "data.num_workers=0",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "was trained on the classes", "cats")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (Debian) to run the report test")
def test_the_report_opens_from_the_file_and_shows_each_tab_in_a_real_browser(audit_run, planted, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    run_dir, _ = audit_run
    root, _, exact, _ = planted
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto((run_dir / "report.html").as_uri())  # no server
        first = page.eval_on_selector(
            "#issues .row",
            "r => [r.dataset.path, r.innerText, r.querySelector('img').naturalWidth, r.querySelector('a').href]",
        )
        visible = page.eval_on_selector_all("section", "s => s.filter(x => !x.hidden).map(x => x.id)")
        page.click("nav button[data-tab=duplicates]")
        pairs = page.eval_on_selector_all("#duplicates .pair", "rows => rows.map(r => [r.dataset.paths, r.innerText])")
        shown_after = page.eval_on_selector_all("section", "s => s.filter(x => !x.hidden).map(x => x.id)")
        page.click("nav button[data-tab=classes]")
        table = page.eval_on_selector_all("#classes tr", "rows => rows.map(r => r.innerText)")
        page.screenshot(path=str(tmp_path / "report.png"))
        browser.close()
    path, text, thumb_width, link = first
    issues = _rows(run_dir / "label_issues.csv")
    assert path == issues[0]["path"] and f"given {issues[0]['given']}" in text
    assert f"suggested {issues[0]['suggested']}" in text
    assert thumb_width > 0 and link == (root / path).as_uri()
    assert visible == ["issues"] and shown_after == ["duplicates"]
    exact_row = next(t for paths, t in pairs if paths == " ".join(exact))
    assert "exact" in exact_row and "leak across subsets" in exact_row
    assert len(table) == 4 and any(row.startswith("red") for row in table)


def test_a_relabel_threshold_outside_0_1_is_one_line(tmp_path):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=6)
    proc = run_cli_here(
        "audit", f"data.root={data}", *AUDIT, "audit.relabel_above=1.5", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "audit.relabel_above", "1.5")


def test_a_stream_is_refused_with_one_line(tmp_path):
    proc = run_cli_here(
        "audit", f"data.stream={tmp_path / 'shards'}", *AUDIT, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "data.stream", "data.root=")


@pytest.mark.slow
def test_several_labels_per_image_go_through_cleanlabs_multilabel_functions(tmp_path):
    root = make_colour_folders(tmp_path / "data", per_class=10)
    rows = [[p.relative_to(root).as_posix(), p.parent.name] for p in sorted(root.rglob("*.png"))]
    rows = [[p, f"{label} bright" if k % 2 else label] for k, (p, label) in enumerate(rows)]
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels"], *rows])
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "audit",
        f"data.labels={root / 'labels.csv'}",
        "data.label_delim=' '",
        *AUDIT,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probs = np.load(run_dir / "pred_probs.npy")
    assert probs.shape == (len(rows), 4) and ((probs >= 0) & (probs <= 1)).all()
    given = {r["path"]: set(r["given_label"].split()) for r in _rows(run_dir / "cleaned_labels.csv")}
    assert given == {p: set(label.split()) for p, label in rows}
    assert {r["subset"] for r in _rows(run_dir / "images.csv")} == {"train", "val", "test"}
