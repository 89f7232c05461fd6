"""``vggtune lr_find``: Lightning's range test on the configured run, its plot, data and suggested command."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, assert_one_line_error, run_cli_here


@pytest.mark.slow
def test_lr_find_sweeps_the_range_writes_the_plot_and_prints_the_train_command(tmp_path, tiny_data):
    run_dir = tmp_path / "lrf"
    proc = run_cli_here(
        "lr_find",
        f"data.root={tiny_data}",
        *TINY,
        "lr_find.num_training=8",
        "lr_find.min_lr=1e-6",
        "lr_find.max_lr=1e-1",
        "lr_find.early_stop_threshold=null",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "lr_find.json").read_text())
    lrs = result["lr"]
    assert len(lrs) == 8 and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert 1e-6 <= lrs[0] < 1e-5 and lrs[-1] <= 1e-1
    assert lrs[0] <= result["suggestion"] <= lrs[-1]
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = proc.stdout + proc.stderr
    line = next(s for s in out.splitlines() if s.strip().startswith("vggtune train"))
    assert f"data.root={tiny_data}" in line and f"optim.lr={result['suggestion']:.2g}" in line
    assert "lr_find." not in line and "hydra.run.dir" not in line
    assert not list(run_dir.glob("*.ckpt")) and not list(run_dir.glob(".lr_find*"))


@pytest.mark.parametrize(
    "bad, needle",
    [
        (["lr_find.min_lr=1", "lr_find.max_lr=0.1"], "lr_find.min_lr must be above 0"),
        (["lr_find.num_training=2"], "lr_find.num_training must be a whole number"),
    ],
)
def test_a_bad_range_is_refused_in_one_line_before_a_run_folder_is_made(tmp_path, tiny_data, bad, needle):
    proc = run_cli_here("lr_find", f"data.root={tiny_data}", *TINY, *bad, cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "outputs").exists()
