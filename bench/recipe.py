"""vggtune's default recipe beside fastai's ``fine_tune``: same pretrained file, same files, same epochs.

    pip install -e ".[dev,peer]"          # fastai is a bench-only extra, never a vggtune dependency
    python bench/recipe.py                # the tuning tasks (letters, shapes), 3 seeds: ~25 min on 2 cores
    python bench/recipe.py --final        # the final check (scikit-learn's digits), after tuning
    python bench/recipe.py --tasks letters --seeds 0 --runs vggtune 'vggtune:optim.lr=3e-4 callbacks=[default,ema]'   # one comparison

Each task pretrains a VGG from random init on a source family (``transfer.py``, cached), then
fine-tunes that state dict on five target classes with ``--train`` images per class (few-shot 20,
many-shot 100) and validates on ``--val`` per class. A run is one of:

  fastai           ``vision_learner(<the pretrained body>)`` + ``fine_tune(E-1, freeze_epochs=1)``, no augmentation
  fastai-aug       the same with ``batch_tfms=aug_transforms()``
  vggtune          ``vggtune train`` defaults (its default augmentation included)
  'vggtune:K=V ...'  vggtune defaults with Hydra overrides (space-separated: a value may hold commas)

Each run reports the final epoch's validation accuracy and the fit's wall time (data loaders and
model built, training and validation; imports and process start excluded: see ``--command`` for
the whole command's time). The table gives mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
import transfer  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", Path(tempfile.gettempdir()) / "vggtune-recipe"))


def fastai_run(
    data: Path, weights: Path, arch: str, size: int, epochs: int, seed: int, aug: bool, bs: int = 64
) -> dict:
    from fastai.vision import learner as fl
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, aug_transforms, imagenet_stats, set_seed

    def body(pretrained=True, **_):
        m = torchvision.models.get_model(arch, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        m.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.6.")}, strict=False)
        return m

    # fastai's own VGG metadata (cut before the avgpool, its 3-group split), without its download.
    fl.model_meta[body] = {"cut": -2, "split": fl._vgg_split, "stats": imagenet_stats}
    t0 = time.perf_counter()
    set_seed(seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(
        data,
        train="train",
        valid="val",
        item_tfms=Resize(size),
        seed=seed,
        bs=bs,  # fastai's default is 64; --batch-size sets both tools'
        batch_tfms=aug_transforms() if aug else None,
    )
    learn = fl.vision_learner(dls, body, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs - 1, freeze_epochs=1)
        acc = float(learn.validate()[1])
    return {"acc": acc, "fit_s": time.perf_counter() - t0}


def vggtune_run(
    data: Path, weights: Path, arch: str, size: int, epochs: int, seed: int, overrides: list[str], run_dir: Path
) -> dict:
    from hydra import compose, initialize_config_module

    from vggtune.tasks.train import train

    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.root={data}",
                f"model={arch}",
                f"model.weights={weights}",
                f"data.image_size={size}",
                f"trainer.max_epochs={epochs}",
                f"seed={seed}",
                f"paths.run_dir={run_dir}",
                "~logger",
                "callbacks.lr_monitor=null",
                "callbacks.best_checkpoint=null",
                "callbacks.last_checkpoint=null",
                "trainer.enable_checkpointing=false",
                "trainer.enable_progress_bar=false",
                "test_after_fit=false",
                f"data.cache_dir={WORK / 'cache'}",
                *overrides,
            ],
        )
    t0 = time.perf_counter()
    summary = train(cfg)
    return {"acc": float(summary["metrics"]["val/acc"]), "fit_s": time.perf_counter() - t0}


def command_run(spec: str, data: Path, weights: Path, args, seed: int) -> dict:
    """The whole command's wall time in a fresh process (start, imports, fit, what it writes), and its accuracy.

    fastai: this script's ``--fastai-once`` (import + ``fine_tune`` + validate). vggtune: the
    ``vggtune train`` command as a user types it, with its defaults (checkpoints, TensorBoard,
    figures) unless the spec overrides them; the run folder is deleted afterwards.
    """
    import shutil
    import subprocess

    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        common = [str(data), str(weights), args.arch, str(args.size), str(args.epochs), str(seed)]
        if spec.startswith("fastai"):
            aug = "aug" if spec == "fastai-aug" else "noaug"
            cmd = [sys.executable, __file__, "--fastai-once", *common, aug, str(args.batch_size or 64)]
        else:
            overrides = [o for o in spec.partition(":")[2].split() if o]
            cmd = [
                str(Path(sys.executable).with_name("vggtune")),
                "train",
                f"data.root={data}",
                f"model={args.arch}",
                f"model.weights={weights}",
                f"data.image_size={args.size}",
                f"trainer.max_epochs={args.epochs}",
                f"seed={seed}",
                f"hydra.run.dir={tmp}/run",
                f"data.cache_dir={WORK / 'cache'}",
                *([f"data.batch_size={args.batch_size}"] if args.batch_size else []),
                *overrides,
            ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        if spec.startswith("fastai"):
            acc = float(proc.stdout.strip().splitlines()[-1])
        else:
            acc = float(json.loads((Path(tmp) / "run" / "metrics.json").read_text())["metrics"]["val/acc"])
        kept = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        shutil.rmtree(tmp, ignore_errors=True)
    return {"acc": acc, "fit_s": wall, "kept_mb": kept / 1e6}


def run_one(spec: str, task: str, args, seed: int) -> dict:
    source, target = transfer.TASKS[task]
    weights = transfer.pretrain(WORK, source, args.arch, args.size)
    data = transfer.write_split(WORK / f"data-{target}-{args.train}x{args.val}", target, args.train, args.val)
    if args.command:
        return command_run(spec, data, weights, args, seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec in ("fastai", "fastai-aug"):
            bs = args.batch_size or 64
            return fastai_run(data, weights, args.arch, args.size, args.epochs, seed, spec == "fastai-aug", bs)
        overrides = [o for o in spec.partition(":")[2].split() if o]
        overrides += [f"data.batch_size={args.batch_size}"] if args.batch_size else []
        with tempfile.TemporaryDirectory(dir=WORK) as run_dir:
            return vggtune_run(data, weights, args.arch, args.size, args.epochs, seed, overrides, Path(run_dir))


def _cpu() -> dict:
    """``lscpu``'s model name and flags, recorded with the figures (machines here change between sessions)."""
    import subprocess

    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: fields.get(k, "").strip() for k in ("Model name", "CPU(s)", "Flags")}


def main() -> None:
    if sys.argv[1:2] == ["--fastai-once"]:  # a fresh process for --command: data weights arch size epochs seed aug
        data, weights, arch, size, epochs, seed, aug, bs = sys.argv[2:10]
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fastai_run(Path(data), Path(weights), arch, int(size), int(epochs), int(seed), aug == "aug", int(bs))
        print(r["acc"])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["letters", "shapes"])
    p.add_argument("--final", action="store_true", help="the final check: scikit-learn's digits (not for tuning)")
    p.add_argument("--runs", nargs="+", default=["fastai", "vggtune", "vggtune:data.augment=none", "fastai-aug"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arch", default="vgg11_bn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train", type=int, default=20, help="training images per class")
    p.add_argument("--val", type=int, default=150, help="validation images per class")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--command",
        action="store_true",
        help="time each tool's whole command in a fresh process (imports, writing its outputs)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the same batch size for both tools (default: each its own, fastai 64 and vggtune 32)",
    )
    p.add_argument("--out", default=None, help="write every run and the table as JSON here")
    args = p.parse_args()
    if args.final:
        args.tasks = ["digits"]
    WORK.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # Lightning's and vggtune's info lines; errors still raise
    torch.set_num_threads(os.cpu_count() or 1)

    rows, runs = [], []
    for task in args.tasks:
        for seed in args.seeds:  # the tools take turns, so that a busier minute of the machine hits both
            for spec in args.runs:
                r = run_one(spec, task, args, seed)
                runs.append({"task": task, "run": spec, "seed": seed, **r})
                print(f"  {task} {spec} seed {seed}: acc {r['acc']:.3f} fit {r['fit_s']:.1f} s", flush=True)
                if args.out:  # every run as it ends: a long sweep stopped part-way keeps what it measured
                    Path(args.out).write_text(json.dumps({"meta": _meta(), "table": rows, "runs": runs}, indent=1))
        for spec in args.runs:
            done = [r for r in runs if r["task"] == task and r["run"] == spec]
            accs, times = [r["acc"] for r in done], [r["fit_s"] for r in done]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            rows.append(
                {
                    "task": task,
                    "run": spec,
                    "acc_mean": statistics.mean(accs),
                    "acc_sd": sd,
                    "fit_s_mean": statistics.mean(times),
                    "fit_s_sd": statistics.stdev(times) if len(times) > 1 else 0.0,
                    "kept_mb": done[-1].get("kept_mb"),
                }
            )
    print(
        f"\n{args.arch}, {args.size} px, {args.train} train / {args.val} val images per class, "
        f"{args.epochs} epochs, seeds {args.seeds}\n"
    )
    what = "whole command s" if args.command else "fit s"
    print(
        f"| task | run | val acc (mean ± sd) | {what} (mean ± sd) |"
        + (" kept MB |" if args.command else "")
        + "\n|---|---|---:|---:|"
        + ("---:|" if args.command else "")
    )
    for r in rows:
        kept = f" {r['kept_mb']:.0f} |" if args.command else ""
        print(
            f"| {r['task']} | `{r['run']}` | {r['acc_mean']:.3f} ± {r['acc_sd']:.3f} | "
            f"{r['fit_s_mean']:.1f} ± {r['fit_s_sd']:.1f} |{kept}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": _meta(), "table": rows, "runs": runs}, indent=1))


def _meta() -> dict:
    return {
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpu": _cpu(),
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    main()
