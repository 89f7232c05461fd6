"""A one-time pre-resized image cache, and the crop/flip/normalise step done on the training device.

Decoding JPEGs is what limits a GPU fed by a plain loader (the measured PIL loader with 16
workers gives 1,600-2,200 images/s, VGG16 trains at 3,000-4,300 on an H100). So every image is
decoded once, resized so that its short side is ``resize_size`` and centre-cropped to a
``resize_size`` square (the evaluation transform's first step), and stored as uint8 in one
memory-mapped file (built once per node, by one process per core, a chunk at a time: see
:func:`ensure_cache`). A batch is then a memory copy; the random resized crop and the flip are
drawn per image on the CPU (seeded like :class:`~vggtune.data.datasets.SeededDataset`) and applied to
the whole batch on the device with one ``roi_align`` (bilinear crop-and-resize, averaging
ceil(crop/output) samples per pixel when shrinking), followed by normalisation.

Differences from the PIL path, by design: training crops are taken from the centre square, not
the whole image, and the crop is resized with roi_align's box-averaged bilinear sampling instead of
torchvision's antialiasing filter. Evaluation crops are the same pixels as the PIL path's.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torchvision import transforms as T
from torchvision.ops import roi_align
from torchvision.transforms import v2

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_path, remove_partial_files
from vggtune.data.augment import LookDrawer, apply_look, identity_look
from vggtune.data.datasets import SeededDataset
from vggtune.data.images import load_rgb
from vggtune.data.transforms import DEFAULT_CROP_SCALE
from vggtune.model.arch import Preprocessing

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # the file is the raw (N, S, S, 3) uint8 array, no header
CHUNK_BYTES = 8 << 20  # the images one build job decodes and writes at once
RATIO = (3 / 4, 4 / 3)


def _square(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def cache_path(paths: list[Path], prep: Preprocessing, cache_dir: str | Path) -> Path:
    """Where the cache of ``paths`` at ``prep.resize_size`` lives: named by a hash of each file's path, size
    and modification time, so that a changed or added file gives another name (a stale cache is never read)."""
    stamps = [(str(p), *(lambda st: (st.st_size, st.st_mtime_ns))(os.stat(p))) for p in paths]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, prep.resize_size, stamps]).encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / f"images-{key}-{len(paths)}x{prep.resize_size}.u8"


def build_cache(
    paths: list[Path],
    prep: Preprocessing,
    cache_dir: str | Path,
    workers: int | None = None,
    pool: str = "process",
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """The uint8 array (N, S, S, 3) of every image's centre square, written once; its path.

    See :func:`ensure_cache` for ``workers``, ``pool`` and ``chunk_bytes``.
    """
    return ensure_cache(cache_path(paths, prep, cache_dir), paths, prep.resize_size, workers, pool, chunk_bytes)


def ensure_cache(
    path: Path,
    paths: list[Path],
    size: int,
    workers: int | None = None,
    pool: str = "process",
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """``path``, holding the ``size`` squares of ``paths``: read as it is when complete, else built now.

    One process builds it while the others that want it (DDP ranks of the node, other runs) wait on a
    lock beside it, then read it. The build decodes ``chunk_bytes`` of images per job in ``workers``
    processes (None: one per core; 1: in this process; ``pool="thread"``: threads instead), each writing
    its rows straight into a temporary file, renamed onto ``path`` when every row is in: the images in
    memory are a few chunks whatever their number (forked workers add their copy-on-write pages:
    bench/README.md), and a killed build leaves no ``path`` (the next build removes its temporary file).
    """
    nbytes = len(paths) * size * size * 3
    if _complete(path, nbytes):
        log.info("Images: read from the cache %s", path)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.parent / f".{path.name}.lock"):
            if _complete(path, nbytes):
                log.info("Images: read from the cache %s (built by another process meanwhile)", path)
                return path
            for stale in remove_partial_files(path):
                log.info("Images: removed %s, left by a build that was stopped part-way", stale.name)
            _write(path, paths, size, workers or usable_cores(), pool, chunk_bytes)
    except OSError as e:
        raise UserError(
            f"cannot write the image cache {path}: {e}; free space there or set data.cache_dir to a writable folder"
        ) from e
    except BrokenExecutor as e:
        raise UserError(
            f"a process decoding images for the cache {path} ended before its work was done ({e}): "
            "killed, or out of memory? data.cache_workers=N decodes with fewer processes"
        ) from e
    return path


def _complete(path: Path, nbytes: int) -> bool:
    # Only a finished build is renamed onto path; the size check also refuses a file cut short by other means.
    return path.is_file() and path.stat().st_size == nbytes


def _write(path: Path, paths: list[Path], size: int, workers: int, pool: str, chunk_bytes: int) -> None:
    row = size * size * 3
    per_job = max(1, chunk_bytes // row)
    mode = "in this process" if workers <= 1 else f"{workers} {'threads' if pool == 'thread' else 'processes'}"
    log.info(
        "Images: decoding and resizing %d images once into %s (%.1f GB, %s)",
        len(paths),
        path,
        len(paths) * row / 1e9,
        mode,
    )
    progress = _Progress(len(paths))
    with atomic_path(path) as tmp:
        with open(tmp, "r+b") as f:
            f.truncate(len(paths) * row)  # sparse: the jobs fill it in any order
        jobs = (
            (str(tmp), [str(p) for p in paths[i : i + per_job]], i * row, size) for i in range(0, len(paths), per_job)
        )
        with _jobs_runner(workers, pool) as run:
            for count, error in run(_decode_chunk, jobs):
                if error is not None:
                    raise UserError(
                        f"cannot decode {error} while building the image cache: replace or remove the "
                        "file (data.verify=full decodes every image before training, and "
                        "data.on_bad_image=skip then leaves such files out)"
                    )
                progress.add(count)
    log.info(
        "Images: cached %d images in %.1f s (%.0f images/s)",
        len(paths),
        progress.elapsed(),
        len(paths) / max(progress.elapsed(), 1e-9),
    )


def _decode_chunk(job: tuple[str, list[str], int, int]) -> tuple[int, str | None]:
    """In a worker: decode a chunk of images, write their squares at ``offset`` of the file; (images, error)."""
    tmp, chunk, offset, size = job
    square = _square(size)
    rows = np.empty((len(chunk), size, size, 3), dtype=np.uint8)
    for i, name in enumerate(chunk):
        try:
            rows[i] = np.asarray(square(load_rgb(name)))
        except Exception as e:  # a bad file: the parent stops the build with one line naming it
            return 0, f"{name} ({type(e).__name__}: {e})"
    with open(tmp, "r+b") as f:
        f.seek(offset)
        f.write(rows.data.cast("B"))
    return len(chunk), None


@contextmanager
def _jobs_runner(workers: int, pool: str):
    """A function mapping a job function over jobs, in this process or a pool, yielding results as they end.

    At most two jobs per worker are queued (the list of paths is not copied into the queue at once);
    leaving the block early (an error, Ctrl-C) cancels the queued jobs and waits for the running ones.
    """
    if workers <= 1:
        yield map
        return
    executor: ThreadPoolExecutor | ProcessPoolExecutor
    if pool == "thread":
        executor = ThreadPoolExecutor(workers)
    else:
        executor = ProcessPoolExecutor(workers, mp_context=_process_context(), initializer=_start_worker)
        # Without this, each forked worker's garbage collector touches every object it inherited, and so
        # copies the parent's heap page by page (measured: +200 MB for 2 workers, +40 MB frozen). The gc
        # module's documentation recommends freeze() right before fork.
        gc.freeze()

    def run(fn, jobs):
        running = set()
        for job in jobs:
            running.add(executor.submit(fn, job))
            if len(running) >= 2 * workers:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        yield from (f.result() for f in as_completed(running))

    try:
        yield run
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if pool != "thread":
            gc.unfreeze()


def _process_context():
    # fork on Linux: a worker starts at once, sharing the parent's imports; spawn and forkserver
    # import torch again in each (seconds; measured in bench/README.md). The workers only decode with
    # PIL and write to the file; torch's DataLoader forks its workers the same way.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _start_worker() -> None:
    # As the data loader's workers (data.workers.leave_signals_to_main): Ctrl-C reaches the whole process
    # group and SLURM signals every process of a job; the parent decides (and removes the temporary
    # file), a worker finishes its chunk.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _exit_with(parent: int) -> None:
    # A ProcessPoolExecutor worker whose parent was killed (SIGKILL, the OOM killer) would wait for work
    # for ever. torch's DataLoader workers watch their parent the same way.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, which a SLURM job or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Progress:
    """A log line each 5% of the images, at most one every 10 s (none for a build of a few seconds)."""

    def __init__(self, total: int, clock=time.monotonic):
        self.total, self.done, self.shown, self.clock = total, 0, 0, clock
        self.start = self.last = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def add(self, count: int) -> None:
        self.done += count
        now = self.clock()
        if self.done < self.total and (self.done - self.shown) >= 0.05 * self.total and now - self.last >= 10:
            rate = self.done / (now - self.start)
            log.info(
                "Images: %d/%d cached (%.0f%%), %.0f images/s, about %.0f s left",
                self.done,
                self.total,
                100 * self.done / self.total,
                rate,
                (self.total - self.done) / max(rate, 1e-9),
            )
            self.shown, self.last = self.done, now


class CachedImageDataset(SeededDataset):
    """Items of a cache file: (uint8 HWC square, label, crop box x1 y1 x2 y2, flip, look), where ``look``
    is the row of the rotation, zoom, warp and lighting that ``look`` draws after the crop and flip
    (:class:`~vggtune.data.augment.LookDrawer`; none: the identity)."""

    def __init__(
        self,
        path: Path,
        labels: list,  # class indices, or multi-hot targets (multi-label)
        size: int,
        train: bool,
        seed: int | None = None,
        crop_scale: float = DEFAULT_CROP_SCALE,
        flip: bool = True,
        look: LookDrawer | None = None,
    ):
        super().__init__(seed)
        self.path, self.labels, self.size, self.train = path, labels, size, train
        self.scale, self.flip = (crop_scale, 1.0), flip  # as transforms.train_transform(augment="light")
        self.look = look
        self._array: np.memmap | None = None  # opened lazily, in each worker

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self._array is None:
            self._array = np.memmap(
                self.path, dtype=np.uint8, mode="r", shape=(len(self.labels), self.size, self.size, 3)
            )
        image = torch.from_numpy(np.array(self._array[index]))
        return image, self.labels[index], *self.crop_and_flip(index, image)

    def crop_and_flip(self, index: int, image: torch.Tensor) -> tuple[torch.Tensor, bool, torch.Tensor]:
        """Item ``index``'s crop box (x1 y1 x2 y2) in its HWC square ``image``, whether to mirror it and
        its look row, drawn from (seed, epoch, index) in training; the whole square as it is otherwise."""
        box, flip, look = torch.tensor([0.0, 0.0, self.size, self.size]), False, identity_look()
        if self.train:
            with self.seeded(index):  # in the PIL path's order: crop, flip, geometry, lighting
                top, left, h, w = T.RandomResizedCrop.get_params(image.permute(2, 0, 1), self.scale, RATIO)
                flip = bool(torch.rand(()) < 0.5) and self.flip
                if self.look is not None:
                    look = self.look()
            box = torch.tensor([left, top, left + w, top + h], dtype=torch.float32)
        return box, flip, look


def device_transform(batch, prep: Preprocessing, train: bool):
    """(uint8 NHWC squares, labels, boxes, flips, looks) on any device -> (normalised NCHW crops, labels)."""
    images, labels, boxes, flips, looks = batch
    x = images.permute(0, 3, 1, 2).float()
    if train:
        index = torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None]
        x = roi_align(
            x,
            torch.cat([index, boxes.to(x.dtype)], dim=1),
            output_size=prep.image_size,
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        )
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    else:
        x = v2.functional.center_crop(x, [prep.image_size, prep.image_size])
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1) * 255
    if train:
        x = apply_look(x, looks, mean)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std, labels
