"""How long a large labels CSV takes to read, check and split: ``discover(labels=...)`` on N rows.

    python bench/labels_csv.py                     # 100,000 rows of 8x8 PNGs (written once, ~1 min)
    python bench/labels_csv.py --rows 20000 --out bench/results/labels-csv.json

The images are written once into ``$BENCH_WORK/labels-csv-<rows>`` (default under /tmp), a
thousand per folder, with a CSV of relative paths and ten classes. Timed, each in a fresh call:
``read_labels_csv`` (csv module, one stat per row, the header checks), ``discover`` with
``data.verify=header`` (every file's header opened and its end checked, in scan's thread pool) and
with ``data.verify=files`` (existence and size only), and the same for the seeded split
of a folder of class folders holding the same files (the existing path, as the yardstick).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make(rows: int, work: Path) -> Path:
    root = work / f"labels-csv-{rows}"
    done = root / "labels.csv"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    records = []
    for i in range(rows):
        label = f"class{i % 10}"
        rel = Path(label) / f"{i // 10000:02d}" / f"img_{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / rel)
        records.append((rel.as_posix(), label))
    tmp = root / "labels.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(records)
    tmp.rename(done)
    return root


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from vggtune.data.discovery import discover
    from vggtune.data.labels_csv import read_labels_csv

    work = Path(os.environ.get("BENCH_WORK", "/tmp/vggtune-bench"))
    t_make, root = timed(lambda: make(args.rows, work))
    print(f"data: {root} ({args.rows} rows; {t_make:.1f} s to find or write)")
    # warm the page cache the same way for every case: one listing of the tree
    sum(1 for _ in root.rglob("*.png"))
    t_rows, (rows, _) = timed(lambda: read_labels_csv(root / "labels.csv", root, verify="header"))
    t_csv, split = timed(lambda: discover(root, 0.2, 0.1, seed=0, labels=root / "labels.csv"))
    t_files, _ = timed(lambda: discover(root, 0.2, 0.1, seed=0, labels=root / "labels.csv", verify="files"))
    t_folders, split_f = timed(lambda: discover(root, 0.2, 0.1, seed=0))
    result = {
        "rows": args.rows,
        "read_labels_csv_s": round(t_rows, 2),
        "discover_csv_s": round(t_csv, 2),
        "discover_csv_verify_files_s": round(t_files, 2),
        "discover_class_folders_s": round(t_folders, 2),
        "rows_per_s_csv": round(args.rows / t_csv),
        "kept": sum(len(v) for v in split.subsets.values()),
        "kept_class_folders": sum(len(v) for v in split_f.subsets.values()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
