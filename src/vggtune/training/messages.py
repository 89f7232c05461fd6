"""What Lightning prints in every run: kept where it tells the user something, dropped where it does not.

Lightning has no switch for its device lines (lightning #3431, #3724: the answer there is a logger
level). Its ``rank_zero_info`` messages all go to one logger per package, with the useful ones
("Restoring states from the checkpoint ...", "`Trainer.fit` stopped: ..."), so a level would drop
those too: a filter on those loggers drops the few lines named here and nothing else. Lightning's
warnings go through the ``warnings`` module and are untouched.
"""

from __future__ import annotations

import logging

# rank_zero_info writes to rank_zero_module.log: lightning/{pytorch,fabric}/utilities/rank_zero.py.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

# Each the start of a message of the installed Lightning (2.6): what it says is in vggtune's own lines.
CHATTER = (
    "GPU available: ",  # lightning/pytorch/trainer/setup.py _log_device_info: the device is in the config
    "TPU available: ",  # the same; vggtune trains on CPU or GPU
    "Loading `train_dataloader` to estimate number of stepping batches",  # trainer.py, for the LR schedule
)


class _Tidy(logging.Filter):
    """Drops :data:`CHATTER` and Lightning's tips (adverts for its cloud products); strips the newline that
    starts some messages ("\nDetected KeyboardInterrupt, attempting graceful shutdown ...",
    lightning/pytorch/trainer/call.py), which left an empty line in the log file and the text on the next."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        record.msg = record.msg.lstrip("\n")
        return not record.msg.startswith(CHATTER) and "Tip:" not in record.msg


def tidy_lightning_messages() -> None:
    """Install the filter on the loggers Lightning's ``rank_zero_info`` writes to (once each)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Tidy) for f in logger.filters):
            logger.addFilter(_Tidy())
