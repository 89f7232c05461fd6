"""Messy image folders: bad files are found before training, left out and listed; odd but valid ones are used."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import TINY, assert_one_line_error, make_class_folders, run_cli_here
from PIL import Image

from vggtune.data.scan import scan_images

BAD = {"empty.jpg", "truncated.jpg", "random.jpg", "text.png", "bomb.png", "loop.jpg", "unreadable.png"}
ODD_BUT_VALID = {"cmyk.jpg", "deep.png", "rgba.png", "palette.gif", "tiny.png", "café_日本.jpg"}


def _messy_folder(folder):
    """Every kind of file the issue lists, next to ordinary images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    (folder / "empty.jpg").write_bytes(b"")
    good_jpeg = folder / "café_日本.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good_jpeg)
    (folder / "truncated.jpg").write_bytes(good_jpeg.read_bytes()[:300])
    (folder / "random.jpg").write_bytes(rng.integers(0, 255, 2000, dtype=np.uint8).tobytes())
    (folder / "text.png").write_text("this is not a picture\n")
    Image.new("CMYK", (40, 40), (0, 128, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "deep.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.new("RGB", (40, 40), (200, 30, 30)).convert("P").save(folder / "palette.gif")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(folder / "tiny.png")
    # Over Pillow's decompression-bomb limit, yet a small file: one bit per pixel, all zero.
    Image.new("1", (10_000, 9_000)).save(folder / "bomb.png")
    os.symlink("loop.jpg", folder / "loop.jpg")
    unreadable = folder / "unreadable.png"
    Image.new("RGB", (8, 8)).save(unreadable)
    unreadable.chmod(0)
    return folder


def _reasons(run_dir):
    lines = (run_dir / "skipped_images.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t") for line in lines)


@pytest.mark.slow
def test_bad_files_are_left_out_and_listed_and_valid_odd_ones_are_used(tmp_path):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=6)
    _messy_folder(data / "checks")
    run_dir = tmp_path / "run"
    proc = run_cli_here("train", f"data.root={data}", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reasons = {os.path.basename(p): r for p, r in _reasons(run_dir).items()}
    expected_bad = BAD if os.geteuid() != 0 else BAD - {"unreadable.png"}  # root reads any file
    assert set(reasons) == expected_bad
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "decompression-bomb" in reasons["bomb.png"] and "symlink loop" in reasons["loop.jpg"]
    used = (run_dir / "split.csv").read_text(encoding="utf-8")
    assert all(name in used for name in ODD_BUT_VALID)
    assert not any(name in used for name in expected_bad)
    assert f"Skipped {len(expected_bad)} unusable image file(s)" in proc.stdout + proc.stderr


def test_fail_mode_stops_before_training_naming_the_file(tmp_path):
    data = make_class_folders(tmp_path / "d", classes=2, per_class=6)
    (data / "checks" / "zz_empty.jpg").write_bytes(b"")
    proc = run_cli_here("train", f"data.root={data}", *TINY, "data.on_bad_image=fail", cwd=tmp_path)
    assert_one_line_error(proc, "zz_empty.jpg", "empty file", "data.on_bad_image=skip")
    assert not (tmp_path / "outputs" / "train").exists() or not any((tmp_path / "outputs" / "train").iterdir())


def test_full_verification_finds_damage_that_headers_do_not_show(tmp_path):
    path = tmp_path / "damaged.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    middle = raw.index(b"IDAT") + 40
    raw[middle : middle + 64] = bytes(64)  # corrupt the pixel data, keep the header and the IEND marker
    path.write_bytes(bytes(raw))
    assert scan_images([path], verify="header")[0] == [path]
    good, bad = scan_images([path], verify="full")
    assert not good and "cannot be decoded" in bad[0].reason


def test_verify_files_checks_only_that_files_exist_and_are_not_empty(tmp_path):
    good, cut, empty = tmp_path / "good.png", tmp_path / "cut.png", tmp_path / "empty.png"
    Image.new("RGB", (8, 8)).save(good)
    cut.write_bytes(good.read_bytes()[:30])  # a header without the rest
    empty.write_bytes(b"")
    kept, bad = scan_images([good, cut, empty], verify="files")
    assert kept == [good, cut] and [b.path for b in bad] == [empty]  # the cut file is not opened
    assert [b.path for b in scan_images([good, cut, empty], verify="header")[1]] == [cut, empty]


def test_a_file_without_read_permission_is_reported(tmp_path, monkeypatch):
    # Root reads every file whatever its mode, so make the OS answer as it does for other users.
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)
    path.chmod(0)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode))
    good, bad = scan_images([path])
    assert not good and "permission denied" in bad[0].reason


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.val_split=0.7", "leaves no training images"),
        ("data.augment=wild", "data.augment"),
    ],
)
def test_bad_configuration_values(tmp_path, tiny_data, override, needle):
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, "data.test_split=0.3", override, cwd=tmp_path)
    assert_one_line_error(proc, needle)


def test_debug_flag_shows_the_full_traceback(tmp_path):
    proc = run_cli_here("train", *TINY, f"data.root={tmp_path / 'missing'}", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr
