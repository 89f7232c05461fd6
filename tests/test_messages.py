"""Lightning's lines in every run: its device lines and the stepping-batches notice are gone, the rest stays."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
from conftest import ProcessState
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from vggtune.training.messages import RANK_ZERO_LOGGERS, tidy_lightning_messages


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _ScheduledModel(BoringModel):
    def configure_optimizers(self):  # as vggtune's schedules do: Lightning loads the loader to count steps
        assert self.trainer.estimated_stepping_batches > 0
        return super().configure_optimizers()


def test_device_lines_and_the_stepping_batches_notice_are_dropped_and_the_rest_kept(tmp_path):
    kept = _Kept()
    with ProcessState(), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        tidy_lightning_messages()
        tidy_lightning_messages()  # once is enough: a second call adds nothing
        logger = logging.getLogger(RANK_ZERO_LOGGERS[0])
        assert len(logger.filters) == len({type(f) for f in logger.filters})
        logger.addHandler(kept)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(_ScheduledModel())
        rank_zero_warn("a warning from Lightning")
    out = "\n".join(kept.lines)
    assert "Tip:" not in out
    assert "GPU available" not in out and "TPU available" not in out
    assert "to estimate number of stepping batches" not in out
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in out  # Lightning's other messages are kept
    assert any("a warning from Lightning" in str(w.message) for w in warned)  # and its warnings
