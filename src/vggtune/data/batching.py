"""How many training images go in a batch when the data set is small next to ``data.batch_size``."""

from __future__ import annotations

import logging

log = logging.getLogger("vggtune.data.datamodule")  # the line a user reads is the data module's


def lone_last_image(images: int, batch_size: int) -> bool:
    """Whether an epoch's last training batch would hold one image, which BatchNorm cannot train on (the
    pooled head's, or a _bn body's at 32 px: "Expected more than 1 value per channel"): that image then
    sits out the epoch, from files and from a stream alike."""
    return images > batch_size and images % batch_size == 1


def batch_for_data(batch_size: int, n_train: int, world_size: int = 1, stream: bool = False) -> int:
    """``batch_size``, or the training images one device gets in an epoch when that is fewer.

    From files, each of ``world_size`` ranks gets ``ceil(n_train / world_size)`` images (torch's
    DistributedSampler repeats a few to even them out), so that is one whole batch each. litdata
    splits a stream without repeating and drops each rank's partial last batch under DDP, so a batch
    of ``n_train // world_size`` is the largest that still trains.
    """
    share = n_train // world_size if stream else -(-n_train // world_size)
    return max(1, min(batch_size, share))


def fit_batch_to_data(batch_size: int, n_train: int, world_size: int = 1, stream: bool = False) -> int:
    """:func:`batch_for_data`, with one log line when it is smaller than ``batch_size``: one batch of all the
    training images (on each device) per epoch."""
    batch = batch_for_data(batch_size, n_train, world_size, stream)
    if batch < batch_size:
        per_device = f" ({batch} on each of {world_size} devices)" if world_size > 1 else ""
        log.info(
            "data.batch_size=%d is more than the %d training images%s: training on batches of %d, one per epoch",
            batch_size,
            n_train,
            per_device,
            batch,
        )
    return batch
