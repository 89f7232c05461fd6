"""Temperature scaling and test-time augmentation, measured on the generated transfer tasks.

    python bench/calibration.py --out bench/results/calibration-cpu-2026-12-02.json    # ~20-30 min on 2 cores
    python bench/calibration.py --tasks letters --seeds 0                              # one run

Per task (``transfer.TASKS``: letters = letters-a -> letters-b, shapes = textures -> shapes; the
digits task is the recipe's final check and is refused here) and seed:

  1. ``vggtune train`` with its defaults, as ``recipe.py`` runs it (``model=vgg11_bn`` with the
     VGG pretrained here on the source family, ``data.image_size=32``, ``trainer.max_epochs=5``,
     ``seed=S``), as a user types it (``python -m vggtune``, a fresh process: checkpoints written),
     on a flat folder of ``--images`` generated target images per class that vggtune splits itself
     with ``data.val_split`` and ``data.test_split`` (by default 210 -> 20 train, 150 val, 40 test,
     so train and val are recipe.py's 20 and 150 per class);
  2. the temperature the run fitted on the validation logits of best.ckpt's epoch, read from the
     checkpoint (``checkpoint["vggtune"]["calibration"]``);
  3. ``vggtune eval ckpt=<run>/checkpoints/best.ckpt`` on the run's test split, three times:
     ``tta=none``, ``tta=flip``, ``tta=five_crop``; each ``metrics.json`` read.

The temperature is fitted on validation images only, so the test split's ECE and NLL before and
after it are a fair measure. Flips are wrong for letters (a mirrored letter is another glyph), so
``tta=flip`` on letters is expected to cost accuracy; it is run and reported anyway. The run
folders (checkpoints, TensorBoard, eval files) are deleted afterwards; the generated data and the
pretrained VGGs stay in recipe.py's work folder (``$BENCH_WORK``, default ``/tmp/vggtune-recipe``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import recipe  # noqa: E402
import transfer  # noqa: E402

TTAS = ("none", "flip", "five_crop")
T_CLAMP = (0.05, 100.0)  # vggtune.model.calibration's range for the temperature
# Per-run numbers averaged in the table (mean +- sd over seeds), in this order.
FIELDS = (
    "val_acc",
    "test_acc",
    "temperature",
    "val_ece",
    "val_ece_calibrated",
    "ece",
    "ece_calibrated",
    "nll",
    "nll_calibrated",
    "flip_acc",
    "flip_acc_gain",
    "five_crop_acc",
    "five_crop_acc_gain",
    "flip_ece_calibrated",
    "five_crop_ece_calibrated",
)


def vggtune(args: list[str], cwd: Path) -> None:
    """``python -m vggtune <args>`` in a fresh process; its stderr on failure."""
    cmd = [sys.executable, "-m", "vggtune", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")


def target_data(task: str, per_class: int) -> Path:
    """A flat folder of ``per_class`` generated target images per class (class folders; vggtune splits it)."""
    _, target = transfer.TASKS[task]
    # write_split's train/ is a plain folder of class folders; its val/ is left empty and unused.
    root = transfer.write_split(recipe.WORK / f"data-{target}-flat{per_class}", target, per_class, 0)
    return root / "train"


def run_seed(task: str, seed: int, args, weights: Path, data: Path, work: Path) -> dict:
    run = work / f"{task}-seed{seed}"
    vggtune(
        [
            "train",
            f"data.root={data}",
            f"model={args.arch}",
            f"model.weights={weights}",
            f"data.image_size={args.size}",
            f"trainer.max_epochs={args.epochs}",
            f"seed={seed}",
            f"data.val_split={args.val_split}",
            f"data.test_split={args.test_split}",
            f"data.cache_dir={recipe.WORK / 'cache'}",
            f"hydra.run.dir={run}",
            *args.overrides,
        ],
        cwd=work,
    )
    trained = json.loads((run / "metrics.json").read_text())
    ckpt = run / "checkpoints" / "best.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["vggtune"].get("calibration")
    row = {
        "task": task,
        "seed": seed,
        "split": trained["data"]["counts"],
        "val_acc": float(trained["metrics"]["val/acc"]),
        "train_test_acc": trained["metrics"].get("test/acc"),
        "checkpoint_calibration": stored,
    }
    if stored is not None:
        row.update(
            val_ece=stored["ece"], val_ece_calibrated=stored["ece_calibrated"], temperature_epoch=stored["epoch"]
        )
    for tta in TTAS:
        out = work / f"{task}-seed{seed}-eval-{tta}"
        vggtune(["eval", f"ckpt={ckpt}", f"tta={tta}", f"hydra.run.dir={out}"], cwd=work)
        m = json.loads((out / "metrics.json").read_text())
        cal, gain = m["calibration"], m["tta"]
        row[f"eval_{tta}"] = {
            "images": m["data"]["images"],
            "source": m["data"]["source"],
            "metrics": m["metrics"],
            "calibration": cal,
            "tta": gain,
        }
        if tta == "none":
            row.update(
                test_images=m["data"]["images"],
                test_acc=m["metrics"]["acc"],
                temperature=cal["temperature"],
                ece=cal["ece"],
                ece_calibrated=cal.get("ece_calibrated"),
                nll=cal["nll"],
                nll_calibrated=cal.get("nll_calibrated"),
            )
        else:
            row.update(
                {
                    f"{tta}_acc": m["metrics"]["acc"],
                    f"{tta}_acc_without": gain["acc_without"],
                    f"{tta}_acc_gain": gain["acc_gain"],
                    f"{tta}_ece_calibrated": cal.get("ece_calibrated"),
                }
            )
        shutil.rmtree(out, ignore_errors=True)
    t = row["temperature"]
    row["temperature_at_clamp"] = t is not None and any(math.isclose(t, c, rel_tol=1e-6) for c in T_CLAMP)
    if stored is not None and t is not None and not math.isclose(stored["temperature"], t, rel_tol=1e-9):
        row["warning"] = f"checkpoint temperature {stored['temperature']} != eval's {t}"
    shutil.rmtree(run, ignore_errors=True)
    return row


def mean_sd(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def fmt(s: dict, digits: int = 3, sign: bool = False) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:{'+' if sign else ''}.{digits}f} ± {s['sd']:.{digits}f}"


def table(summary: dict) -> str:
    lines = [
        "| task | test acc | temperature | ECE before -> after | NLL before -> after | "
        "tta=flip acc gain | tta=five_crop acc gain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, s in summary.items():
        lines.append(
            f"| {task} | {fmt(s['test_acc'])} | {fmt(s['temperature'], 2)} | "
            f"{fmt(s['ece'])} -> {fmt(s['ece_calibrated'])} | {fmt(s['nll'])} -> {fmt(s['nll_calibrated'])} | "
            f"{fmt(s['flip_acc_gain'], sign=True)} | {fmt(s['five_crop_acc_gain'], sign=True)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tasks", nargs="+", default=["letters", "shapes"], choices=[t for t in transfer.TASKS if t != "digits"]
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    # recipe.py's defaults: vgg11_bn, 32 px, 5 epochs, 20 training and 150 validation images per class.
    p.add_argument("--arch", default="vgg11_bn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=210, help="generated images per class, split by vggtune")
    p.add_argument("--val-split", type=float, default=0.7143, help="of --images: 150 of 210")
    p.add_argument("--test-split", type=float, default=0.1905, help="of --images: 40 of 210")
    p.add_argument("--overrides", nargs="*", default=[], help="more vggtune train overrides")
    p.add_argument("--out", default=None, help="write every run and the summary as JSON here")
    args = p.parse_args()
    recipe.WORK.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    rows, summary = [], {}
    for task in args.tasks:
        source, _ = transfer.TASKS[task]
        weights = transfer.pretrain(recipe.WORK, source, args.arch, args.size)
        data = target_data(task, args.images)
        task_rows = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(dir=recipe.WORK, prefix="calibration-") as work:
                r = run_seed(task, seed, args, weights, data, Path(work))
            task_rows.append(r)
            print(
                f"  {task} seed {seed}: split {r['split']}, test acc {r['test_acc']:.3f}, T {r['temperature']:.3f} "
                f"(epoch {r.get('temperature_epoch')}), test ECE {r['ece']:.3f} -> {r['ece_calibrated']:.3f}, "
                f"NLL {r['nll']:.3f} -> {r['nll_calibrated']:.3f}, flip {r['flip_acc_gain']:+.3f}, "
                f"five_crop {r['five_crop_acc_gain']:+.3f} ({time.perf_counter() - t0:.0f} s)"
                + (" TEMPERATURE AT CLAMP" if r["temperature_at_clamp"] else "")
                + (f" WARNING {r['warning']}" if "warning" in r else ""),
                flush=True,
            )
        rows += task_rows
        summary[task] = {f: mean_sd([r.get(f) for r in task_rows]) for f in FIELDS}
    print(
        f"\n{args.arch}, {args.size} px, {args.epochs} epochs, {args.images} images per class split "
        f"val {args.val_split} / test {args.test_split}, seeds {args.seeds}; mean ± sd over seeds\n"
    )
    print(table(summary))
    if args.out:
        meta = {
            "argv": sys.argv[1:],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            "total_s": time.perf_counter() - t0,
            "settings": vars(args),
        }
        Path(args.out).write_text(
            json.dumps({"meta": meta, "summary": summary, "table": table(summary), "runs": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
