"""The progress callbacks driven hook by hook with a stand-in trainer and a clock the test moves: the plain
lines' steps, rates and time left (computed here from the planted times), and the bar's log redirect,
ticker thread and clean-up. tests/test_progress.py trains on a terminal and off one (slow)."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from vggtune.core.errors import UserError
from vggtune.training import progress
from vggtune.training.progress import PlainProgress, TimedBar, _batch_len, _clock, progress_bar


def _trainer(batches=5, max_epochs=2, processed=0, metrics=None, loggers=()) -> SimpleNamespace:
    """What the callbacks read of a Trainer (Lightning's own ProgressBar code reads it too)."""
    current = SimpleNamespace(processed=processed)
    return SimpleNamespace(
        training=True,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=current))),
        num_training_batches=batches,
        max_epochs=max_epochs,
        max_steps=-1,
        global_step=0,
        current_epoch=0,
        progress_bar_metrics=dict(metrics or {}),
        loggers=list(loggers),
        is_global_zero=True,
    )


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def _epoch(bar, trainer, clock, step_seconds=0.5, images=4):
    bar.on_train_epoch_start(trainer, None)
    for i in range(trainer.num_training_batches):
        clock[0] += step_seconds
        bar.on_train_batch_end(trainer, None, None, (torch.zeros(images, 3), torch.zeros(images)), i)


def test_plain_lines_give_the_step_loss_rate_and_time_left(clock, capsys):
    # A logger's version (v_num) is Lightning's standard metric: the plain lines leave it out.
    trainer = _trainer(metrics={"train/loss": 0.123456}, loggers=[SimpleNamespace(version=7)])
    bar = PlainProgress(every_n_steps=2)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    _epoch(bar, trainer, clock)
    clock[0] += 1.3  # validation
    trainer.progress_bar_metrics = {"train/loss": 0.1, "val/acc": 0.75}
    bar.on_train_epoch_end(trainer, None)
    # 8 images a second (4 per 0.5 s step); time left = seconds per step so far x steps left in the run:
    # at step 2, 0.5 x (3 + 5) = 4 s; at step 4, 0.5 x (1 + 5) = 3 s; after epoch 1, 3.8 s / 5 steps x 5 = 3.8 s
    assert capsys.readouterr().out.splitlines() == [
        "epoch 1/2 step 2/5 loss 0.1235 8.0 img/s eta 0:00:04",
        "epoch 1/2 step 4/5 loss 0.1235 8.0 img/s eta 0:00:03",
        "epoch 1/2 done in 3.8 s (training 8.0 img/s) train/loss 0.1 val/acc 0.75 eta 0:00:04",
    ]
    trainer.current_epoch = 1
    _epoch(bar, trainer, clock, step_seconds=1.0, images=2)  # the window restarts each epoch: 2 img/s now
    bar.on_train_epoch_end(trainer, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 2/2 step 2/5 loss 0.1 2.0 img/s eta ")
    assert lines[-1] == "epoch 2/2 done in 5.0 s (training 2.0 img/s) train/loss 0.1 val/acc 0.75"  # the last: no eta


def test_without_an_epoch_count_or_a_batch_count_the_lines_say_less(clock, capsys):
    trainer = _trainer(batches=float("inf"), max_epochs=-1)
    bar = PlainProgress(every_n_steps=1)
    bar.setup(trainer, None, "fit")
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    clock[0] += 2.0
    bar.on_train_batch_end(trainer, None, None, [[0] * 3], 0)
    assert capsys.readouterr().out == "epoch 1 step 1/? 1.5 img/s\n"  # no loss logged yet, no eta


def test_a_disabled_bar_prints_nothing(clock, capsys):
    trainer = _trainer()
    bar = PlainProgress(every_n_steps=1)
    bar.setup(trainer, None, "fit")
    bar.disable()
    _epoch(bar, trainer, clock)
    bar.on_train_epoch_end(trainer, None)
    bar.print("hidden")
    assert capsys.readouterr().out == ""
    bar.enable()
    bar.print("shown", 2)
    assert capsys.readouterr().out == "shown 2\n"


def test_a_run_resumed_within_an_epoch_starts_the_epoch_s_counts(clock, capsys):
    trainer = _trainer(processed=3)  # 3 of the epoch's 5 batches ran before the save
    bar = PlainProgress(every_n_steps=1)
    bar.setup(trainer, None, "fit")
    bar._epoch_images = 99  # left from nothing: on_train_start must reset it through the epoch start
    clock[0] = 200.0
    bar.on_train_start(trainer, None)
    assert bar._epoch_start == 200.0 and bar._epoch_images == 0
    clock[0] += 1.0
    bar.on_train_batch_end(trainer, None, None, (torch.zeros(5, 3), None), 3)
    assert re.fullmatch(r"epoch 1/2 step 4/5 5\.0 img/s eta 0:00:06\n", capsys.readouterr().out)
    fresh = _trainer(processed=5)  # a finished epoch is not part-way: the next epoch's start resets
    bar.on_train_start(fresh, None)
    assert bar._epoch_images == 5


@pytest.mark.parametrize(
    "batch, n",
    [((torch.zeros(6, 2), torch.zeros(6)), 6), ([[1, 2], [3, 4]], 2), (torch.zeros(3, 1), 3), (7, 0), ([], 0)],
)
def test_a_batch_s_image_count(batch, n):
    assert _batch_len(batch) == n


def test_the_time_left_reads_as_a_clock():
    assert [_clock(s) for s in (0, 59.6, 3725, 36000)] == ["0:00:00", "0:01:00", "1:02:05", "10:00:00"]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"mode": "fancy"}, "mode"),
        ({"refresh_seconds": -1}, "refresh_seconds"),
        ({"every_n_steps": 0}, "every_n_steps"),
    ],
)
def test_a_wrong_progress_setting_is_one_line(kwargs, key):
    with pytest.raises(UserError, match=f"^callbacks.progress_bar.{key} must be") as e:
        progress_bar(**kwargs)
    assert "\n" not in str(e.value)


def test_only_a_stream_that_says_it_is_a_terminal_is_one(tmp_path):
    closed = open(tmp_path / "log.txt", "w")
    closed.close()
    tty = SimpleNamespace(isatty=lambda: True)
    assert [progress._is_terminal(s) for s in (tty, io.StringIO(), closed, object())] == [True, False, False, False]


def test_plain_and_bar_get_their_settings():
    assert progress_bar("plain", every_n_steps=7).every_n_steps == 7
    assert progress_bar("bar", refresh_seconds=2.5).refresh_seconds == 2.5


class _FakeBar:
    """A tqdm bar as the ticker and on_exception see it: refreshed, closed, maybe disabled or failing."""

    def __init__(self, disable=False, fail=False):
        self.disable, self.fail = disable, fail
        self.refreshed = self.closed = 0

    def refresh(self):
        self.refreshed += 1
        if self.fail:
            raise RuntimeError("closed meanwhile")

    def close(self):
        self.closed += 1
        if self.fail:
            raise RuntimeError("closed twice")


def _ticker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vggtune-progress"]


def test_the_bar_sends_log_lines_through_tqdm_and_redraws_between_steps_until_teardown():
    name = "lightning.pytorch"
    lightning_log = logging.getLogger(name)
    mine = logging.StreamHandler(sys.stderr)
    saved = list(lightning_log.handlers)
    lightning_log.handlers[:] = [mine]
    try:
        bar = TimedBar(refresh_seconds=0)  # the ticker's floor: every 0.2 s
        train, val = _FakeBar(fail=True), _FakeBar(disable=True)
        bar._train_progress_bar, bar._val_progress_bar = train, val
        bar.setup(_trainer(), None, "fit")
        kinds = [type(h).__name__ for h in lightning_log.handlers]
        assert kinds == ["_TqdmLoggingHandler"]  # the console handler replaced by tqdm.write's
        assert len(_ticker_threads()) == 1
        deadline = time.monotonic() + 5
        while train.refreshed < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert train.refreshed >= 2  # it went on after a refresh that failed
        assert val.refreshed == 0  # a disabled bar is left alone
        bar.setup(_trainer(), None, "validate")  # a second setup starts nothing more
        assert len(_ticker_threads()) == 1
        bar.teardown(_trainer(), None, "fit")
        assert lightning_log.handlers == [mine] and not _ticker_threads()
    finally:
        lightning_log.handlers[:] = saved


def test_on_an_exception_the_open_bars_end_their_lines_and_the_ticker_stops():
    bar = TimedBar(refresh_seconds=5)
    train, val = _FakeBar(fail=True), _FakeBar(disable=True)
    bar._train_progress_bar, bar._val_progress_bar = train, val
    bar.setup(_trainer(), None, "fit")
    assert len(_ticker_threads()) == 1
    started = time.monotonic()
    bar.on_exception(_trainer(), None, KeyboardInterrupt())
    assert time.monotonic() - started < 2  # the ticker wakes on the stop, not after its 5 s
    assert (train.closed, val.closed) == (1, 0) and not _ticker_threads() and bar._redirect is None


def test_a_disabled_bar_starts_no_ticker_and_is_never_drawn():
    bar = TimedBar(refresh_seconds=0)
    not_zero = _trainer()
    not_zero.is_global_zero = False  # another DDP rank: Lightning's setup disables the bar
    bar.setup(not_zero, None, "fit")
    assert not _ticker_threads() and bar._redirect is None
    assert not bar._should_update(5, 5)
    bar.teardown(not_zero, None, "fit")


def test_the_bar_of_a_run_resumed_within_an_epoch_gets_the_epoch_s_total(capsys):
    bar = TimedBar(refresh_seconds=1)
    bar.disable()  # no redirect or ticker needed here; the bar's own state is what is checked
    resumed = _trainer(batches=10, processed=4)
    resumed.current_epoch = 2
    bar._trainer = resumed
    bar._last_draw = 123.0
    bar.on_train_start(resumed, None)
    assert bar.train_progress_bar.total == 10 and bar.train_progress_bar.desc.startswith("Epoch 2")
    assert bar._last_draw == float("-inf")  # the next step is drawn
    fresh = _trainer(batches=10)
    bar._last_draw = 123.0
    bar.on_train_start(fresh, None)
    assert bar._last_draw == 123.0  # no epoch start yet: Lightning's own comes next
