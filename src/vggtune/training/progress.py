"""Training progress on a terminal (a bar that keeps moving) and off one (plain lines for nohup, SLURM, pipes).

Lightning's ``TQDMProgressBar`` redraws every ``refresh_rate`` steps: with 10 batches an epoch and
``refresh_rate=20`` it sits at ``0/10`` for the whole epoch, then jumps; off a terminal it fills the
log with ``\\r`` frames; and log lines written while a bar is drawn land inside it. Here:

- on a terminal, the bar is redrawn at most every ``refresh_seconds`` of wall time (a clock read
  per step, no device sync), and a small thread redraws it in between so that the elapsed time keeps
  moving during a long step; log records go through ``tqdm.write`` (tqdm's ``logging_redirect_tqdm``)
  so that they print above the bar, not into it;
- off a terminal, there is no bar: one line every ``every_n_steps`` steps and one per epoch, with the
  step, the loss, images/s and the time left.

The loss is read back from the device only when something is drawn or printed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from tqdm.contrib.logging import logging_redirect_tqdm

from vggtune.model.resume import batches_done_in_epoch
from vggtune.schema.check import check_value

# Lightning's loggers get handlers of their own (and stop propagating) when Lightning is imported before
# logging is configured, as in a script that builds a Trainer itself: redirect those too.
_REDIRECTED_LOGGERS = ("", "lightning.pytorch", "lightning.fabric")


def progress_bar(mode: str = "auto", refresh_seconds: float = 1.0, every_n_steps: int = 50) -> ProgressBar:
    """The progress callback for ``mode``: ``bar`` (terminal), ``plain`` (lines), ``auto`` (bar when stdout is a terminal)."""
    for key, value in (("mode", mode), ("refresh_seconds", refresh_seconds), ("every_n_steps", every_n_steps)):
        check_value(f"callbacks.progress_bar.{key}", value)
    if mode == "auto":
        mode = "bar" if _is_terminal(sys.stdout) else "plain"
    return TimedBar(refresh_seconds) if mode == "bar" else PlainProgress(every_n_steps)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class TimedBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn by wall time instead of every N steps, with log lines kept out of it."""

    def __init__(self, refresh_seconds: float = 1.0):
        check_value("callbacks.progress_bar.refresh_seconds", refresh_seconds)
        super().__init__(refresh_rate=1)
        self.refresh_seconds = float(refresh_seconds)
        self._last_draw = float("-inf")
        self._redirect: contextlib.ExitStack | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if not self.is_enabled or (current != total and now - self._last_draw < self.refresh_seconds):
            return False
        self._last_draw = now
        return True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if batches_done_in_epoch(trainer):  # resumed part-way through an epoch, which gets no epoch start
            self.on_train_epoch_start(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._last_draw = float("-inf")  # draw the first step of each epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.is_enabled and self._redirect is None:
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm([logging.getLogger(n) for n in _REDIRECTED_LOGGERS]))
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="vggtune-progress", daemon=True)
            self._ticker.start()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Ctrl-C, SIGTERM, an error: end the bars' lines first, so that what is logged next (where the
        # interrupted run was saved) starts on a line of its own instead of after the last frame.
        self._stop.set()
        for name in ("_train_progress_bar", "_val_progress_bar"):
            bar = getattr(self, name, None)
            if bar is not None and not bar.disable:
                with contextlib.suppress(Exception):
                    bar.close()
        self._close()

    def _close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def _tick(self) -> None:
        """Redraw the open bars between steps, so that a step of several seconds does not look like a hang."""
        interval = max(self.refresh_seconds, 0.2)
        while not self._stop.wait(interval):
            for name in ("_train_progress_bar", "_val_progress_bar"):
                bar = getattr(self, name, None)
                if bar is not None and not bar.disable:
                    with contextlib.suppress(Exception):  # a bar closed between the check and the draw
                        bar.refresh()


class PlainProgress(ProgressBar):
    """One line every ``every_n_steps`` training steps and one per epoch, for logs that are files, not terminals."""

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        check_value("callbacks.progress_bar.every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._fit_start = self._epoch_start = self._window_start = self._last_step_end = 0.0
        self._steps_done = self._window_images = self._epoch_images = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._enabled:
            print(*args, sep=sep, flush=True)

    def _emit(self, line: str) -> None:
        if self._enabled:
            print(line, file=sys.stdout, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()
        self._steps_done = 0
        if batches_done_in_epoch(trainer):  # resumed part-way through an epoch, which gets no epoch start
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._window_start = self._last_step_end = time.monotonic()
        self._window_images = self._epoch_images = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images = _batch_len(batch)
        self._window_images += images
        self._epoch_images += images
        self._steps_done += 1
        self._last_step_end = time.monotonic()
        n, total = batch_idx + 1, self.total_train_batches
        if n % self.every_n_steps or n == total:  # the last step is reported by the epoch line
            return
        now = time.monotonic()
        rate = self._window_images / max(now - self._window_start, 1e-9)
        self._window_start, self._window_images = now, 0
        loss = self.get_metrics(trainer, pl_module).get("train/loss")
        self._emit(
            " ".join(
                filter(
                    None,
                    [
                        f"{self._epoch_label(trainer)} step {n}/{_count(total)}",
                        f"loss {_fmt(loss)}" if loss is not None else "",
                        f"{rate:.1f} img/s",
                        self._eta(trainer, n, total, now),
                    ],
                )
            )
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.monotonic()
        seconds, training = now - self._epoch_start, self._last_step_end - self._epoch_start
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        total = self.total_train_batches
        self._emit(
            " ".join(
                filter(
                    None,
                    [
                        f"{self._epoch_label(trainer)} done in {seconds:.1f} s",
                        f"(training {self._epoch_images / max(training, 1e-9):.1f} img/s)",
                        shown,
                        self._eta(trainer, total, total, now)
                        if trainer.current_epoch + 1 < (trainer.max_epochs or 0)
                        else "",
                    ],
                )
            )
        )

    @staticmethod
    def _epoch_label(trainer: pl.Trainer) -> str:
        last = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return f"epoch {trainer.current_epoch + 1}" + (f"/{last}" if last else "")

    def _eta(self, trainer: pl.Trainer, n: float, total: Any, now: float) -> str:
        """Time to the end of the run at this run's pace so far (validation included once an epoch has passed)."""
        if not isinstance(total, int) or not trainer.max_epochs or trainer.max_epochs < 1 or not self._steps_done:
            return ""
        left = (total - n) + (trainer.max_epochs - trainer.current_epoch - 1) * total
        seconds = (now - self._fit_start) / self._steps_done * left
        return f"eta {_clock(seconds)}"


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    try:
        return len(first)
    except TypeError:
        return 0


def _count(total: Any) -> str:
    return str(total) if isinstance(total, int) else "?"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
