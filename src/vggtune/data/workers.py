"""Loader processes: how many (``auto``: one per core, up to 8), and how they take signals."""

from __future__ import annotations

import signal

from vggtune.core.checks import check_positive_int
from vggtune.data.image_cache import usable_cores


def leave_signals_to_main(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the main process, which finishes its step, saves a
    checkpoint and then stops them.

    A terminal sends SIGINT to the whole process group, and SLURM sends SIGTERM to every process of
    a pre-empted job: a worker killed by it makes the main process fail with "DataLoader worker ...
    is killed by signal: Terminated", in the middle of saving. A worker still exits when the main
    process dies (torch's workers watch their parent). Lightning seeds workers only when a loader
    has no ``worker_init_fn``; these need none: every item seeds itself (SeededDataset).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resolve_workers(value: int | str, name: str = "data.num_workers") -> int:
    """``auto`` (one loader process per core, up to 8) or a whole number of at least 0."""
    return auto_workers() if value == "auto" else check_positive_int(name, value, allow_zero=True)


def auto_workers() -> int:
    """One loader process per core this process may use, up to 8."""
    return min(8, usable_cores())
