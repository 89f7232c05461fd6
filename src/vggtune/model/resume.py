"""Where a run stands within an epoch, for checkpoints written part-way through one (Ctrl-C, SIGTERM).

What resumes such a run exactly: the data module's state (the batches of the epoch already
trained, left out by the sampler), :class:`~vggtune.training.callbacks.EpochSeed`'s (torch's
generators between two steps), the module's (the epoch's training metrics so far) and
:class:`~vggtune.model.finetune.FreezeSchedule` applying that epoch's schedule, since Lightning
calls no epoch-start hook in a resumed epoch.
"""

from __future__ import annotations


def batches_done_in_epoch(trainer) -> int:
    """How many of the current epoch's training batches have run, when that is part of the epoch; else 0.

    Read while a checkpoint is written, it is where the saved run stops; read at the start of a
    restored run, where it goes on. Lightning counts a batch as *processed* once its step ran
    (*completed* only after every ``on_train_batch_end`` hook): a save from such a hook (Ctrl-C,
    ``every_n_train_steps``) and one after it (SIGTERM) both resume at the next batch.
    """
    if trainer is None or not trainer.training:
        return 0
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    total = trainer.num_training_batches
    return done if 0 < done < total else 0


def epochs_done(ckpt: dict) -> int:
    """The epochs a training checkpoint has finished, counted as Lightning's fit loop counts them when it
    decides that ``max_epochs`` is reached (``epoch_progress.current.processed``, raised before the
    ``on_train_epoch_end`` hook that saves ``last.ckpt``); 0 for a checkpoint without loop state."""
    progress = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}
    return int((progress.get("current") or {}).get("processed", 0))
