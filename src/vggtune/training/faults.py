"""Callbacks that keep a run safe when it goes wrong: a non-finite loss, Ctrl-C, SIGTERM (pre-emption)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vggtune.core.errors import UserError

log = logging.getLogger(__name__)

INTERRUPTED_CKPT = "interrupted.ckpt"


class StopOnNonFiniteLoss(pl.Callback):
    """Stop the run, naming the epoch and step, when the training loss becomes NaN or infinite.

    The check costs no host sync per step: the first bad step is recorded on the device and
    looked at every ``check_every_n_steps`` steps and before each epoch's checkpoints are
    written (this callback's epoch-end hook runs before ModelCheckpoint's), so no checkpoint
    is ever written from a diverged model and the last good ``last.ckpt`` stays.
    """

    def __init__(self, check_every_n_steps: int = 50):
        self.every = max(1, int(check_every_n_steps))
        self._where: torch.Tensor | None = None  # (epoch, batch, global step) of the first bad loss, or -1s
        self._bad_value: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        if self._where is None or self._bad_value is None:  # set together
            self._where = torch.full((3,), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        new = (~torch.isfinite(loss)) & (self._where[0] < 0)
        here = torch.tensor([trainer.current_epoch, batch_idx, trainer.global_step], device=loss.device)
        self._where = torch.where(new, here, self._where)
        self._bad_value = torch.where(new, loss, self._bad_value)
        if trainer.global_step % self.every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if self._where is None or self._bad_value is None:
            return
        epoch, batch, step = self._where.tolist()  # the host sync, once every `every` steps
        if epoch >= 0:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise UserError(
                f"the training loss became {float(self._bad_value)} at epoch {epoch}, batch {batch} "
                f"(global step {step}); training stopped and {kept}. Lower optim.lr, or set "
                "trainer.gradient_clip_val=1.0"
            )


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C (SIGINT) or SIGTERM, save ``checkpoints/interrupted.ckpt`` and say how to resume.

    Both stop between two training steps, so that the checkpoint resumes exactly: Lightning defers
    SIGTERM to the end of a step itself; Ctrl-C, which Python raises wherever the main thread is
    (in the middle of an optimizer step, say), is deferred here the same way while training runs on
    one process. A second Ctrl-C stops at once. Under DDP the ranks must stop at the same step, so
    there Ctrl-C stops at once as before and SIGTERM (which Lightning broadcasts) is the exact way.
    """

    def __init__(self):
        self.signal: signal.Signals | None = None
        self.saved: Path | None = None
        self._stop_requested = False
        self._previous_handler = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._stop_requested = False
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum, frame) -> None:
        if self._stop_requested:  # the second one
            self._restore_handler()
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning(
            "Ctrl-C: stopping after this training step and saving a checkpoint that resumes exactly "
            "(Ctrl-C again to stop at once)"
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()
        if self._stop_requested:  # pressed during the last validation: training is done, testing is not
            raise KeyboardInterrupt

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if isinstance(exception, KeyboardInterrupt):
            self.signal = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signal = signal.SIGTERM
        else:
            return
        run_dir = Path(trainer.default_root_dir)
        self.saved = run_dir / "checkpoints" / INTERRUPTED_CKPT
        trainer.save_checkpoint(self.saved, weights_only=False)  # said, or Lightning logs that it chose it
        if trainer.is_global_zero:
            log.warning(
                "Interrupted by %s at epoch %d, step %d; saved %s",
                self.signal.name,
                trainer.current_epoch,
                trainer.global_step,
                self.saved,
            )
            log.warning("Resume with: vggtune train resume=%s", run_dir)

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + int(self.signal) if self.signal is not None else 1
