"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _commit(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    os.replace(tmp, path)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file beside ``path``; on success, flush it to disk and rename it onto ``path``.

    A crash or kill at any point leaves either the old ``path`` or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike):
    """The path of an empty temporary file beside ``path``, for writers that open it themselves (several
    processes, a memory map); on success it is flushed to disk and renamed onto ``path``, on failure removed.

    A process killed meanwhile leaves the temporary file (see :func:`remove_partial_files`), never ``path``.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writers of ``path`` killed part-way left beside it; those removed.

    Only safe while no other process is writing ``path`` (hold a lock on it).
    """
    path = Path(path)
    found = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for stale in found:
        stale.unlink(missing_ok=True)
    return found
