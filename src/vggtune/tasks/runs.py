"""Run folders: writing their files, choosing where a task's output goes, telling the user where things went."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open

log = logging.getLogger(__name__)


# resume=<run>: Hydra rewrites <run>/.hydra (config, overrides) when the resumed job starts. Until
# training really continues, the run's previous .hydra is kept here and put back if the job fails,
# so that a resume refused for a bad override does not make that override part of the run.
RESUME_BACKUP = ".hydra.before-resume"


def back_up_run_config(run_dir: Path) -> None:
    """Keep ``run_dir/.hydra`` aside before a resume (see :data:`RESUME_BACKUP`)."""
    hydra_dir, backup = run_dir / ".hydra", run_dir / RESUME_BACKUP
    if hydra_dir.is_dir() and not backup.exists():  # an existing backup is older, from a resume that never ran
        shutil.copytree(hydra_dir, backup)


def restore_run_config(run_dir: Path) -> None:
    """Put a failed resume's ``.hydra`` back as it was (nothing to do when there is no backup)."""
    backup = run_dir / RESUME_BACKUP
    if backup.is_dir():
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
        backup.rename(run_dir / ".hydra")


def commit_run_config(run_dir: Path) -> None:
    """The resumed run goes on: its new ``.hydra`` stands, the backup goes."""
    shutil.rmtree(run_dir / RESUME_BACKUP, ignore_errors=True)


def write_json(path: Path, data) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_skipped(run_dir: Path, skipped, csv: bool = False) -> None:
    """``skipped_images.txt`` (path, tab, reason) for the (path, reason) pairs left out, and a warning naming them."""
    if not skipped:
        return
    with open(run_dir / "skipped_images.txt", "w", encoding="utf-8") as f:
        for path, reason in skipped:
            f.write(f"{path}\t{reason}\n")
    log.warning(
        "Skipped %d unusable image file(s)%s, listed in %s:",
        len(skipped),
        " or CSV rows" if csv else "",
        run_dir / "skipped_images.txt",
    )
    for path, reason in list(skipped)[:10]:
        log.warning("  %s: %s", path, reason)


def write_csv(path: Path, header: list[str], rows) -> None:
    """Write a header and ``rows`` as CSV (``\\n`` line ends), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def rel(path: str | Path) -> str:
    """``path`` relative to the current folder when that is possible (shorter to read and to paste)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def report_run(run_dir: Path, summary: dict) -> None:
    """Print what the run produced and where (the last thing a user reads)."""
    metrics = summary["metrics"]
    names = ("val/acc", "val/map", "val/f1", "val/loss", "val/acc_best", "test/acc", "test/map", "test/f1")
    shown = [k for k in dict.fromkeys((summary.get("monitor"), *names)) if k in metrics]
    lines = [f"Run folder: {rel(run_dir)}", "  metrics:     " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown)]
    if summary.get("best_checkpoint"):
        lines.append(f"  best:        {rel(summary['best_checkpoint'])}  (by {summary['monitor']})")
    lines += [
        f"  last:        {rel(summary['last_checkpoint'])}",
        f"  metrics.json, split.csv, config in .hydra/, log in {summary.get('log', 'train.log')}",
        f"  TensorBoard: tensorboard --logdir {rel(run_dir)}",
    ]
    if summary.get("best_checkpoint"):
        # Without a test split (data.test_split=0, as in the demo), eval's default subset does not exist.
        subset = "" if "test" in (summary.get("data") or {}).get("counts", {"test": None}) else " data.subset=val"
        lines.append(f"  next:        vggtune eval ckpt={rel(summary['best_checkpoint'])}{subset}")
    log.info("\n".join(lines))


def output_path(value: str | None, run_dir: Path, default_name: str) -> Path:
    """Where a task writes its main file: ``value`` as the user typed it, or ``default_name`` in the run folder.

    A relative ``value`` is taken from the folder vggtune was started in (Hydra does not change
    into the run folder), as for any other command line tool; ``~`` is expanded.
    """
    if value is None or str(value).strip() == "":
        return run_dir / default_name
    path = Path(str(value)).expanduser().absolute()
    if path.is_dir():
        raise UserError(f"output {path} is a folder: pass a file name, e.g. output={path / default_name}")
    try:  # find out now, not after minutes of work, that the file cannot be written
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise UserError(f"cannot write output {path} ({e.strerror or e}): pass another output=") from None
    return path


def keep_copy(path: Path, run_dir: Path, name: str) -> bool:
    """Copy ``path`` into the run folder as ``name`` unless it is already there; True if it copied.

    A file written where the user asked is easily overwritten by the next command; the run
    folder keeps its own record next to the config and the log.
    """
    if path.parent.resolve() == run_dir.resolve():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, run_dir / name)
    return True


def report_files(run_dir: Path, files: dict[str, str]) -> None:
    """Print the run folder and what each of its files (names relative to it) holds."""
    width = max(map(len, files))
    lines = [f"Run folder: {rel(run_dir)}", *(f"  {name.ljust(width)}  {what}" for name, what in files.items())]
    log.info("\n".join(lines))


def score_cell(value) -> str:
    """A CSV cell for a score: 4 decimals; an undefined one (precision of a class never predicted) empty, not 0."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
