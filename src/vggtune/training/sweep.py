"""Sweeps (``vggtune train -m ...``): launch modes that work, one that is refused, and the summary table.

``-m`` with ``trainer.strategy=ddp`` is broken upstream: Lightning starts ranks 1..N by running
the command line again, so every rank launches the whole sweep into a folder of its own
(lightning #11300, hydra #2070, lightning-hydra-template #393). It is refused before anything
starts. What works: ``ddp_spawn`` inside a sweep (the ranks are spawned inside each job), or a
submitit launcher, where each job is its own SLURM allocation and Lightning finds its ranks in
the SLURM environment instead of starting them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vggtune.core.errors import UserError

log = logging.getLogger(__name__)
SWEEP_ERROR_FILE = "error.txt"  # in a failed job's folder: why it failed, in one line (vggtune.cli)

# Launchers whose jobs are independent processes with their own ranks (no re-run of the command line).
SLURM_LAUNCHERS = ("submitit_slurm",)
# Strategies whose extra ranks Lightning starts by running the command line again.
RELAUNCHING = ("ddp", "ddp_find_unused_parameters_true", "ddp_static_graph")
# What a launcher's resources should follow unless the user sets them.
_SLURM_FROM_TRAINER = {
    "nodes": "${trainer.num_nodes}",
    "tasks_per_node": "${trainer.devices}",
    "gpus_per_node": "${trainer.devices}",
}


def check_sweep_strategy(strategy: Any, devices: Any, launcher: str) -> None:
    """Refuse a sweep job that would re-launch the sweep from each DDP rank."""
    several = str(devices) not in ("1", "auto", "None") or isinstance(devices, (list, tuple))
    if str(strategy) in RELAUNCHING and several and launcher not in SLURM_LAUNCHERS:
        raise UserError(
            f"a sweep (-m) with trainer.strategy={strategy} would make every DDP rank start the whole sweep "
            "again (lightning #11300): use trainer.strategy=ddp_spawn in sweeps, or hydra/launcher=submitit_slurm "
            "(one allocation per job); nothing was started"
        )


def launcher_overrides(launcher: str, overrides: list[str]) -> list[str]:
    """Tie a SLURM launcher's nodes and tasks to ``trainer.num_nodes``/``trainer.devices`` unless set."""
    if launcher not in SLURM_LAUNCHERS:
        return []
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    return [f"hydra.launcher.{k}={v}" for k, v in _SLURM_FROM_TRAINER.items() if f"hydra.launcher.{k}" not in given]


class SweepSummary(Callback):
    """At the end of a sweep, print and save ``summary.csv``: every job's overrides and final metrics."""

    failed: str | None = None  # after a sweep with failed jobs: what the command says last (vggtune.cli)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_jobs(sweep_dir)
        if not rows:
            return
        failed = sum(r["status"] == "failed" for r in rows)
        SweepSummary.failed = (
            (
                f"{failed} of {len(rows)} sweep jobs failed: their reasons are in the error column "
                f"of {sweep_dir / 'summary.csv'}"
            )
            if failed
            else None
        )
        monitor = next((r["monitor"] for r in rows if r.get("monitor")), "val/acc")
        maximize = str(config.get("monitor_mode", "max")) == "max"
        rows.sort(key=lambda r: _sort_key(r.get(monitor), maximize))
        columns = _columns(rows, monitor)
        write_csv(sweep_dir / "summary.csv", rows, columns)
        log.info(
            "Sweep summary (%d jobs, best %s first), also in %s:\n%s",
            len(rows),
            monitor,
            sweep_dir / "summary.csv",
            format_table(rows, columns),
        )


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job folder: its number, the overrides that vary, status and final metrics."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_order):
        overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]  # a list of strings
        row = {"job": job.name, **dict(o.split("=", 1) for o in overrides if "=" in o)}
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            summary = json.loads(metrics_file.read_text())
            row.update(summary["metrics"], monitor=summary.get("monitor"), status="done")
        else:
            row["status"] = "failed"
            error_file = job / SWEEP_ERROR_FILE
            if error_file.is_file():
                row["error"] = error_file.read_text(encoding="utf-8").strip()
        rows.append(row)
    varying = {k for k in set().union(*rows) if len({str(r.get(k)) for r in rows}) > 1}
    return [{k: v for k, v in r.items() if k in varying or not _is_override(k)} for r in rows]


def _is_override(key: str) -> bool:
    return key not in ("job", "status", "monitor", "error") and not key.startswith(("val/", "train/", "test/"))


def _job_order(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def _sort_key(value, maximize: bool):
    if not isinstance(value, (int, float)) or math.isnan(value):
        return (1, 0.0)
    return (0, -value if maximize else value)


def _columns(rows: list[dict], monitor: str) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    metrics = [monitor] + [k for k in ("val/acc", "val/f1", "val/loss", "test/acc") if k != monitor]
    overrides = [k for k in keys if _is_override(k)]
    return ["job", *overrides, *[m for m in metrics if m in keys], "status", *(["error"] if "error" in keys else [])]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV with the given columns (missing values empty)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table, numbers to four decimals."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
