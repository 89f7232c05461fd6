"""Training progress: a bar that moves by the clock on a terminal, with log lines above it, and plain
lines (step, loss, images/s, time left) when stdout is a pipe or a file."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

import pytest
from conftest import TINY, run_cli_here, vggtune_command

from vggtune.training import progress
from vggtune.training.progress import PlainProgress, TimedBar, progress_bar

# The tiny run, with the progress callback on (TINY turns it off for the rest of the suite).
SHOWN = [a for a in TINY if not a.startswith(("trainer.enable_progress_bar", "trainer.max_epochs"))] + [
    "trainer.enable_progress_bar=true",
    "trainer.max_epochs=2",
    "data.batch_size=4",
    "logger=null",
]


def _run_on_a_terminal(args: list[str], cwd, timeout: float = 300) -> str:
    """Run ``vggtune <args>`` with stdout and stderr on a pseudo-terminal of 120 columns; all it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [*vggtune_command(), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


@pytest.mark.slow
def test_on_a_terminal_the_bar_moves_within_an_epoch_and_log_lines_stay_out_of_it(tmp_path, tiny_data):
    out = _run_on_a_terminal(
        [
            "train",
            f"data.root={tiny_data}",
            *SHOWN,
            "trainer.max_epochs=1",
            "callbacks.progress_bar.refresh_seconds=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    frames = [f for f in re.split(r"[\r\n]", out) if f.startswith("Epoch 0:") and "it/s" in f]
    counts = {int(m.group(1)) for f in frames if (m := re.search(r"\| (\d+)/(\d+) \[", f))}
    total = max(counts)
    assert total >= 4 and set(range(1, total + 1)) <= counts, counts  # drawn at every step, not only at the end
    # The freeze schedule's log line starts a line of its own: the bar is cleared before it ("\r"), and
    # it is never glued to a frame ("...it/s]Epoch 0: training").
    message = "Epoch 0: training"
    at = out.index(message)
    assert out[at - 1] in "\r\n", repr(out[at - 200 : at + 40])
    assert not re.search(r"(it/s|\])" + re.escape(message), out)
    assert not re.search(r"^epoch \d+/\d+ (step|done)", out, re.MULTILINE), "plain lines belong off a terminal"


@pytest.mark.slow
def test_off_a_terminal_plain_lines_report_steps_and_epochs_without_carriage_returns(tmp_path, tiny_data):
    # In the test process, stdout captured in a buffer: not a terminal, as a pipe or a file is not.
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *SHOWN,
        "callbacks.progress_bar.every_n_steps=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout and "it/s]" not in proc.stdout
    steps = re.findall(
        r"^epoch (\d)/2 step (\d+)/(\d+) loss ([\d.e+-]+) ([\d.]+) img/s eta (\d+:\d\d:\d\d)$",
        proc.stdout,
        re.MULTILINE,
    )
    total = int(steps[0][2])
    expected = [(str(e), str(n)) for e in (1, 2) for n in range(2, total, 2)]
    assert [(e, n) for e, n, *_ in steps] == expected, proc.stdout
    assert all(float(rate) > 0 for *_, rate, _ in steps)
    epochs = re.findall(
        r"^epoch (\d)/2 done in [\d.]+ s \(training [\d.]+ img/s\) .*val/acc ([\d.]+)", proc.stdout, re.MULTILINE
    )
    assert [e for e, _ in epochs] == ["1", "2"], proc.stdout
    assert re.search(r"^epoch 1/2 done .* eta \d+:\d\d:\d\d$", proc.stdout, re.MULTILINE)  # time left to the run's end


def test_the_bar_is_redrawn_by_the_clock_not_by_the_step_count(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = TimedBar(refresh_seconds=1.0)
    drawn = []
    for step in range(1, 11):  # a step every 0.4 s, ten steps an epoch
        clock[0] += 0.4
        if bar._should_update(step, 10):
            drawn.append(step)
    # the first step, then once a second (every third step at 0.4 s), and the last step of the epoch
    assert drawn == [1, 4, 7, 10]
    slow = TimedBar(refresh_seconds=1.0)
    for step in range(1, 4):  # steps of 5 s: every one of them is drawn
        clock[0] += 5
        assert slow._should_update(step, 100)


@pytest.mark.parametrize("tty, kind", [(True, TimedBar), (False, PlainProgress)])
def test_auto_mode_picks_the_bar_only_for_a_terminal(monkeypatch, tty, kind):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: tty)
    assert type(progress_bar("auto")) is kind
    assert type(progress_bar("plain")) is PlainProgress and type(progress_bar("bar")) is TimedBar
