"""Run folders: refusing to overwrite one, writing its files, telling the user where things went."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from vggtune.files import atomic_open

log = logging.getLogger(__name__)


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_csv(path: Path, header: list[str], rows) -> None:
    """Write a header and ``rows`` as CSV (``\\n`` line ends), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _rel(path: str | Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def report_run(run_dir: Path, summary: dict) -> None:
    """Print what the run produced and where (the last thing a user reads)."""
    metrics = summary["metrics"]
    shown = [k for k in ("val/acc", "val/f1", "val/loss", "val/acc_best", "test/acc", "test/f1") if k in metrics]
    lines = [f"Run folder: {_rel(run_dir)}",
             "  metrics:     " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown)]
    if summary.get("best_checkpoint"):
        lines.append(f"  best:        {_rel(summary['best_checkpoint'])}  (by {summary['monitor']})")
    lines += [f"  last:        {_rel(summary['last_checkpoint'])}",
              f"  metrics.json, split.csv, config in .hydra/, log in {summary.get('log', 'train.log')}",
              f"  TensorBoard: tensorboard --logdir {_rel(run_dir)}"]
    if summary.get("best_checkpoint"):
        lines.append(f"  next:        vggtune eval ckpt={_rel(summary['best_checkpoint'])}")
    log.info("\n".join(lines))


def report_files(run_dir: Path, files: dict[str, str]) -> None:
    """Print the run folder and what each of its files (names relative to it) holds."""
    width = max(map(len, files))
    lines = [f"Run folder: {_rel(run_dir)}", *(f"  {name.ljust(width)}  {what}" for name, what in files.items())]
    log.info("\n".join(lines))
