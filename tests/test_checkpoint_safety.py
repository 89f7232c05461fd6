"""Checkpoints load safely: nothing in a file is executed, and a bad file gets one line saying what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli, run_cli_here

from vggtune.core.errors import UserError
from vggtune.use.inference import load_model


class _RunsCode:
    """Unpickling this runs ``exec``: the marker file appears if a loader executes anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.slow
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"vggtune": {"format": 1}, "state_dict": {}, "hyper_parameters": {"arch": _RunsCode(marker)}}, evil)
    torch.load(evil, weights_only=False)  # the file really is malicious: a trusting loader runs it
    assert marker.is_file()
    marker.unlink()

    proc = run_cli("predict", f"ckpt={evil}", f"input={evil}", "device=cpu", cwd=tmp_path)
    assert_one_line_error(proc, "refused to load checkpoint", "would run code (exec)")
    assert not marker.exists()
    assert not (tmp_path / "outputs").exists()


def _not_a_checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "notes.ckpt").write_text("these are my notes, not weights")
    return tmp_path / "notes.ckpt"


def _other_project(tmp_path: Path) -> Path:
    torch.save(
        {
            "state_dict": {"encoder.weight": torch.zeros(2, 2)},
            "epoch": 3,
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"lr": 0.1},
        },
        tmp_path / "other.ckpt",
    )
    return tmp_path / "other.ckpt"


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda tmp: tmp / "missing.ckpt", "does not exist: pass ckpt="),
        (_not_a_checkpoint, "is not a PyTorch checkpoint"),
        (_other_project, "is not a vggtune checkpoint"),
    ],
)
def test_a_bad_checkpoint_gets_one_line_saying_what_is_wrong(make, needle, tmp_path):
    # Every task loads through load_model; the CLI prints a UserError as one line with exit status 2
    # (the malicious-checkpoint test above checks that end to end).
    with pytest.raises(UserError, match=needle) as e:
        load_model(make(tmp_path), "cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("task, needle", [("eval", "ckpt=<train run folder>"), ("predict", "input=<an image")])
def test_missing_arguments_say_what_to_pass(task, needle, tmp_path):
    extra = ["ckpt=best.ckpt"] if task == "predict" else []  # checked before any file is opened
    assert_one_line_error(run_cli_here(task, *extra, cwd=tmp_path), needle)
    assert not (tmp_path / "outputs").exists()
