"""Building the one-time image cache (``data.cache_images``) of 20,000 JPEGs: memory and images/s.

    python bench/image_cache.py                                   # 20,000 JPEGs, 144 px squares (1.2 GB)
    python bench/image_cache.py --images 5000 --rounds 1 --out bench/results/x.json

The JPEGs (64 to 128 px a side, smooth random colour fields, quality 90) are written once into
``$BENCH_WORK/image-cache-<images>`` (default under /tmp). Each case then builds the cache in a
fresh Python process (so that one case's memory does not count in the next), into a new folder
that is removed afterwards:

- ``old``: the build before issue 18, copied here: the whole array in RAM, filled by a thread pool,
  then written with ``tobytes`` (a second copy);
- ``processes`` / ``threads`` / ``in-process``: ``build_cache(workers=cores, pool=...)`` and ``workers=1``;
- ``processes-forkserver``: the same with the forkserver start method instead of fork.

Then :func:`gil_share`: how much of an image's CPU time holds the GIL, the ceiling on threads.

Memory is the peak, during the build, of the proportional set size (PSS, /proc/PID/smaps_rollup)
summed over the process and its children, minus the process's PSS just before the build: what
the build adds, counting pages shared with forked workers once. It is sampled every 0.25 s; a
sample during which a worker started or ended is dropped (the shares were read before and after). The
main process's VmHWM growth (reset through /proc/self/clear_refs) is reported beside it. The
page cache (the JPEGs read, the file written) is not process memory and is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CASES = ("old", "processes", "threads", "in-process", "processes-forkserver")


def make(images: int, work: Path) -> Path:
    """``images`` JPEGs of 64-128 px in folders of 1,000, written once."""
    root = work / f"image-cache-{images}"
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(images):
        w, h = (int(v) for v in rng.integers(64, 129, 2))
        field = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(field).resize((w, h), Image.BICUBIC)
        path = root / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    done.touch()
    return root


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}/task").is_dir() else []:
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return pids


class PeakMemory:
    """The largest PSS of this process and its descendants while it runs, sampled in a thread."""

    def __init__(self, every: float = 0.25):  # a sample costs ~30 ms of a core (smaps_rollup of torch's mappings)
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(os.getpid())
            total = sum(_pss(p) for p in pids)
            # A worker started or ended while the sum was read: shared pages may count twice (a peak of
            # hundreds of MB that is not there). Drop that sample.
            if _tree(os.getpid()) == pids:
                self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def old_build(paths: list[Path], prep, cache_dir: Path, workers: int) -> Path:
    """The build as it was before issue 18 (git 57cd4c7), the key aside."""
    from concurrent.futures import ThreadPoolExecutor

    from vggtune.core.files import atomic_open
    from vggtune.data.image_cache import _square
    from vggtune.data.images import load_rgb

    size = prep.resize_size
    path = cache_dir / f"old-{len(paths)}x{size}.u8"
    square = _square(size)
    array = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        array[i] = np.asarray(square(load_rgb(paths[i])))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fill, range(len(paths))))
    with atomic_open(path, "wb") as f:
        f.write(array.tobytes())
    return path


def gil_share(root: Path, resize: int, images: int = 1000) -> dict:
    """The share of one image's decode-and-resize CPU time spent holding the GIL, which caps threads.

    Pillow releases the GIL inside its JPEG decoder and its resampling (``ImagingSectionEnter`` in
    decode.c and Resample.c); everything else (the JPEG header parser, torchvision's dispatch,
    ``tobytes``) is Python or holds it. Thread CPU time (immune to other jobs' load) of the whole
    loop, and of those two calls under cProfile: threads can go at most 1 / share times faster than
    one thread, whatever the number of cores.
    """
    import cProfile
    import pstats

    from vggtune.data.image_cache import _square
    from vggtune.data.images import load_rgb

    paths, square = sorted(root.rglob("*.jpg"))[:images], _square(resize)

    def work():
        for p in paths:
            np.asarray(square(load_rgb(p)))

    work()
    totals = []
    for _ in range(3):
        start = time.thread_time()
        work()
        totals.append(time.thread_time() - start)
    profile = cProfile.Profile(time.thread_time)
    profile.runcall(work)
    released = sum(
        tt
        for (_, _, name), (_, _, tt, _, _) in pstats.Stats(profile).stats.items()
        if name in ("<method 'decode' of 'ImagingDecoder' objects>", "<method 'resize' of 'ImagingCore' objects>")
    )
    total = float(np.median(totals))
    share = 1 - released / total
    return {
        "cpu_ms_per_image": round(total / len(paths) * 1e3, 3),
        "gil_released_ms_per_image": round(released / len(paths) * 1e3, 3),
        "gil_held_share": round(share, 2),
        "thread_speedup_cap": round(1 / share, 1),
    }


def run_case(case: str, root: Path, resize: int, out: Path) -> dict:
    """In this (fresh) process: build the cache one way; the measurements."""
    import multiprocessing

    from vggtune.data import image_cache
    from vggtune.model.arch import Preprocessing

    paths = sorted(root.rglob("*.jpg"))
    prep = Preprocessing(resize, resize, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    cores = image_cache.usable_cores()
    if case == "processes-forkserver":
        image_cache._process_context = lambda: multiprocessing.get_context("forkserver")
    build = {
        "old": lambda: old_build(paths, prep, out, cores),
        "processes": lambda: image_cache.build_cache(paths, prep, out, workers=cores, pool="process"),
        "processes-forkserver": lambda: image_cache.build_cache(paths, prep, out, workers=cores, pool="process"),
        "threads": lambda: image_cache.build_cache(paths, prep, out, workers=cores, pool="thread"),
        "in-process": lambda: image_cache.build_cache(paths, prep, out, workers=1),
    }[case]
    base_pss = sum(_pss(p) for p in _tree(os.getpid()))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base_rss = _status("VmRSS")
    start, cpu = time.perf_counter(), os.times()
    with PeakMemory() as peak:
        path = build()
    seconds = time.perf_counter() - start
    hwm = _status("VmHWM")
    cpu = sum(os.times()[:4]) - sum(cpu[:4])  # user + system, this process and its ended workers
    size = path.stat().st_size
    digest = int(np.fromfile(path, np.uint8)[::4099].astype(np.int64).sum())  # the cases must agree
    return {
        "case": case,
        "images": len(paths),
        "workers": 1 if case == "in-process" else cores,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(paths) / seconds),
        "cpu_ms_per_image": round(cpu / len(paths) * 1e3, 3),
        "array_mb": round(size / 1e6),
        "peak_pss_growth_mb": round((peak.peak - base_pss) / 1e6),
        "main_hwm_growth_mb": round((hwm - base_rss) / 1e6),
        "check": digest,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--resize", type=int, default=144, help="the cache's square side (144: 1.24 GB for 20,000)")
    ap.add_argument("--rounds", type=int, default=2, help="each case this often, the order reversed each round")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "gil":
        print(json.dumps(gil_share(args.root, args.resize)))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.root, args.resize, args.cache)))
        return
    work = Path(os.environ.get("BENCH_WORK", "/tmp/vggtune-bench"))
    start = time.perf_counter()
    root = make(args.images, work)
    print(f"data: {root} ({args.images} JPEGs; {time.perf_counter() - start:.1f} s to find or write)", flush=True)
    cases, runs = args.cases.split(","), []
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            cache = work / f"image-cache-out-{case}"
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    case,
                    "--root",
                    str(root),
                    "--cache",
                    str(cache),
                    "--resize",
                    str(args.resize),
                ],
                capture_output=True,
                text=True,
            )
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            if proc.returncode:
                sys.exit(f"{case} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    assert len({r["check"] for r in runs}) == 1, "the cases built different files"
    gil = subprocess.run(
        [sys.executable, __file__, "--case", "gil", "--root", str(root), "--resize", str(args.resize)],
        capture_output=True,
        text=True,
        check=True,
    )
    gil = json.loads(gil.stdout.splitlines()[-1])
    print("GIL:", json.dumps(gil), flush=True)
    summary = {
        case: {
            k: float(np.median([r[k] for r in runs if r["case"] == case]))
            for k in ("seconds", "images_per_s", "cpu_ms_per_image", "peak_pss_growth_mb", "main_hwm_growth_mb")
        }
        for case in cases
    }
    result = {
        "images": args.images,
        "resize": args.resize,
        "array_mb": runs[0]["array_mb"],
        "rounds": args.rounds,
        "median": summary,
        "gil": gil,
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, shared with other jobs",
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
