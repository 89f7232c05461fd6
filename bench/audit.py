"""``vggtune audit`` measured: planted label flips found, retraining on its cleaned labels, planted copies
found, and its time and memory.

    python bench/audit.py --out bench/results/audit-cpu-<date>.json          # noise, retrain, copies: ~15 min
    python bench/audit.py --noise 0.2 --fix drop --train 20 --out ...   # retrain after dropping, 20 a class
    python bench/audit.py --timing --out bench/results/audit-timing-cpu-<date>.json   # alone: flock -x

Task: the recipe bench's "letters" transfer (``transfer.py``): vgg11_bn pretrained here on letters K-O
at 32 px, audited on letters A-E (``--train`` and ``--val`` images per class). In each seed a share
(10%, 20%) of the *training* labels is flipped to another class at random, in a labels CSV (the files
stay as they are). Flagged = ``label_issues.csv``; precision, recall and F1 against the flips. In the
same run, on the same images and heads: ranking by in-sample loss (one head trained on every label,
the images with the highest loss, as many as the audit flagged), the audit's folds on the other vectors
(``audit.vectors``: conv or fc7), its probabilities through cleanlab's default filter, and with
``--fastai`` the peer as its users run it (``fine_tune`` on the noisy labels, then the training images
by their loss, as fastai's ImageClassifierCleaner lists them; given the audit's count).

Retraining: ``vggtune train`` (its defaults, ``--epochs``) on the clean labels, the noisy ones and the
audit's ``cleaned_labels.csv`` (its training rows; val keeps its true labels so that the three runs are
scored on the same truth). Copies: ``--copies`` training images copied into val byte for byte, as many
again resized to 75% and re-encoded as JPEG (quality 75); found = the pair is in ``duplicates.csv``;
false pairs = pairs flagged that are not planted, as a share of all flagged, for several thresholds.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import transfer  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", Path(tempfile.gettempdir()) / "vggtune-audit"))
ARCH, SIZE = "vgg11_bn", 32


def _compose(task: str, overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("vggtune.conf", version_base="1.3"):
        return compose(task, overrides=overrides, return_hydra_config=False)


def _audit(root: Path, labels: Path, weights: Path, run_dir: Path, seed: int, extra=()) -> dict:
    from vggtune.tasks.audit import run

    cfg = _compose(
        "audit",
        [
            f"data.root={root}",
            f"data.labels={labels}",
            f"model={ARCH}",
            f"model.weights={weights}",
            f"data.image_size={SIZE}",
            "device=cpu",
            f"seed={seed}",
            f"paths.run_dir={run_dir}",
            f"data.cache_dir={WORK / 'cache'}",
            *extra,
        ],
    )
    return run(cfg), cfg


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_labels(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "subset"], *rows])
    return path


def _prf(flagged: set, truth: set) -> dict:
    tp = len(flagged & truth)
    p, r = tp / max(1, len(flagged)), tp / max(1, len(truth))
    return {"flagged": len(flagged), "precision": p, "recall": r, "f1": 2 * p * r / max(1e-12, p + r)}


def noisy_rows(root: Path, noise: float, seed: int) -> tuple[list[list[str]], set[str], list[list[str]]]:
    """(rows with a share ``noise`` of the training labels flipped, the flipped paths, the clean rows)."""
    clean = [
        [p.relative_to(root).as_posix(), p.parent.name, s]
        for s in ("train", "val")
        for p in sorted((root / s).rglob("*.png"))
    ]
    classes = sorted({r[1] for r in clean})
    rng = random.Random(f"{seed}/{noise}")
    train = [i for i, r in enumerate(clean) if r[2] == "train"]
    flips = set(rng.sample(train, round(noise * len(train))))
    rows = [
        [p, rng.choice([c for c in classes if c != label]) if i in flips else label, s]
        for i, (p, label, s) in enumerate(clean)
    ]
    return rows, {clean[i][0] for i in flips}, clean


def baselines(cfg, run_dir: Path, flips: set, flagged: int) -> dict:
    """On the same images and heads: ranking by in-sample loss, the folds on the other vectors, and the audit's
    own out-of-fold probabilities through cleanlab's default filter (``prune_by_noise_rate``)."""
    from vggtune.inspect.folds import in_sample, out_of_fold
    from vggtune.inspect.label_issues import by_loss, find_label_issues
    from vggtune.tasks.audit import VECTORS, audit_split, check_settings, image_vectors, load_network

    split = audit_split(cfg.data)
    settings = check_settings(cfg.audit)
    net, _, weights_id = load_network(cfg, split.classes)
    images = _rows(run_dir / "images.csv")
    y = np.array([split.classes.index(r["label"]) for r in images])
    paths = [r["path"] for r in images]
    x = image_vectors(net, split, weights_id, cfg, settings.vectors)
    loss_top = by_loss(y, in_sample(x, y, len(split.classes), settings.recipe, cfg.seed), flagged)
    other = next(v for v in VECTORS if v != settings.vectors)
    x_other = image_vectors(net, split, weights_id, cfg, other)
    folds_other = out_of_fold(x_other, y, len(split.classes), settings.folds, settings.recipe, cfg.seed)
    return {
        "in_sample_loss": _prf({paths[i] for i in loss_top}, flips),
        f"folds_on_{other}": _prf(
            {paths[i] for i in find_label_issues(y, folds_other, filter_by=settings.filter_by).ranked}, flips
        ),
        "cleanlab_default_filter": _prf(
            {
                paths[i]
                for i in find_label_issues(y, np.load(run_dir / "pred_probs.npy"), False, "prune_by_noise_rate").ranked
            },
            flips,
        ),
    }


def fastai_cleaner(rows: list[list[str]], root: Path, weights: Path, seed: int, epochs: int, count: int) -> list[str]:
    """The peer as its users run it: fastai's ``fine_tune`` on the noisy labels (the same pretrained file,
    ``--epochs``, batch 32), then the training images with the highest loss under that model, as
    ``ImageClassifierCleaner`` lists them (``learn.dls[0].new(shuffle=False)``, ``get_preds(with_loss=True)``;
    fastai/vision/widgets.py ``_get_iw_info``); the first ``count`` of them, the audit's flagged count."""
    import contextlib
    import io
    import warnings

    import pandas as pd
    import torch
    import torchvision
    from fastai.vision import learner as fl
    from fastai.vision.all import ImageDataLoaders, Resize, imagenet_stats, set_seed

    def body(pretrained=True, **_):
        m = torchvision.models.get_model(ARCH, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        m.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.6.")}, strict=False)
        return m

    fl.model_meta[body] = {"cut": -2, "split": fl._vgg_split, "stats": imagenet_stats}  # as bench/recipe.py
    df = pd.DataFrame([(p, label, s == "val") for p, label, s in rows], columns=["path", "label", "is_valid"])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        set_seed(seed, reproducible=True)
        dls = ImageDataLoaders.from_df(
            df, path=root, fn_col=0, label_col=1, valid_col=2, item_tfms=Resize(SIZE), bs=32, seed=seed
        )
        learn = fl.vision_learner(dls, body)
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(epochs - 1, freeze_epochs=1)
            dl = learn.dls[0].new(shuffle=False, drop_last=False)
            _, _, losses = learn.get_preds(dl=dl, with_loss=True)
    names = list(dl.items["path"])  # the training rows of df, in the order of the losses
    return [names[i] for i in losses.argsort(descending=True)[:count].tolist()]


def _train(labels: Path, root: Path, weights: Path, seed: int, epochs: int) -> float:
    from vggtune.tasks.train import train

    with tempfile.TemporaryDirectory(dir=WORK) as run_dir:
        cfg = _compose(
            "train",
            [
                f"data.root={root}",
                f"data.labels={labels}",
                f"model={ARCH}",
                f"model.weights={weights}",
                f"data.image_size={SIZE}",
                f"trainer.max_epochs={epochs}",
                f"seed={seed}",
                f"paths.run_dir={run_dir}",
                "~logger",
                "callbacks.lr_monitor=null",
                "callbacks.best_checkpoint=null",
                "callbacks.last_checkpoint=null",
                "trainer=cpu",
                "trainer.enable_checkpointing=false",
                "trainer.enable_progress_bar=false",
                "test_after_fit=false",
                f"data.cache_dir={WORK / 'cache'}",
            ],
        )
        return float(train(cfg)["metrics"]["val/acc"])


def label_noise(args, root: Path, weights: Path) -> list[dict]:
    out = []
    for seed in args.seeds:
        clean_acc = None
        for noise in args.noise:
            rows, flips, clean = noisy_rows(root, noise, seed)
            labels = _write_labels(WORK / f"noisy-{noise}-{seed}.csv", rows)
            run_dir = WORK / f"audit-{noise}-{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            summary, cfg = _audit(root, labels, weights, run_dir, seed, [f"audit.fix={args.fix}", *args.overrides])
            flagged = {r["path"] for r in _rows(run_dir / "label_issues.csv")}
            r = {
                "seed": seed,
                "noise": noise,
                "flips": len(flips),
                "audit": _prf(flagged, flips),
                **baselines(cfg, run_dir, flips, len(flagged)),
                **(
                    {
                        "fastai_cleaner": _prf(
                            set(fastai_cleaner(rows, root, weights, seed, args.epochs, len(flagged))), flips
                        )
                    }
                    if args.fastai
                    else {}
                ),
                "seconds": summary["seconds"],
            }
            if noise in args.retrain:
                if clean_acc is None:
                    clean_acc = _train(_write_labels(WORK / "clean.csv", clean), root, weights, seed, args.epochs)
                truth = {p: label for p, label, s in clean if s == "val"}
                cleaned = [
                    [c["path"], c["label"], c["subset"], c["drop"]] for c in _rows(run_dir / "cleaned_labels.csv")
                ]
                kept = [[p, truth.get(p, label), s] for p, label, s, drop in cleaned if drop == "0" or s == "val"]
                r["retrain"] = {
                    "clean": clean_acc,
                    "noisy": _train(labels, root, weights, seed, args.epochs),
                    "cleaned": _train(_write_labels(WORK / "cleaned.csv", kept), root, weights, seed, args.epochs),
                }
                lost = r["retrain"]["clean"] - r["retrain"]["noisy"]
                r["retrain"]["recovered_share"] = (
                    (r["retrain"]["cleaned"] - r["retrain"]["noisy"]) / lost if lost > 0 else None
                )
            out.append(r)
            print(json.dumps(r), flush=True)
    return out


def _variant(src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        small = im.convert("RGB").resize((round(im.width * 0.75), round(im.height * 0.75)), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=75)
    dst.write_bytes(buf.getvalue())


def copies(args, root: Path, weights: Path) -> dict:
    """Planted copies of training images in val: found at the default threshold, and over a sweep."""
    from vggtune.inspect.duplicates import exact_pairs, near_pairs
    from vggtune.inspect.image_facts import all_facts

    data = WORK / "copies"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(root, data)
    _, _, clean = noisy_rows(data, 0.0, 0)
    rng = random.Random(0)
    train = [r for r in clean if r[2] == "train"]
    planted, rows = set(), list(clean)
    for k, (p, label, _) in enumerate(rng.sample(train, 2 * args.copies)):
        kind = "exact" if k < args.copies else "resized"
        copy = f"val/{label}/planted_{kind}_{k}" + (".png" if kind == "exact" else ".jpg")
        (shutil.copyfile(data / p, data / copy) if kind == "exact" else _variant(data / p, data / copy))
        planted.add(tuple(sorted((p, copy))))
        rows.append([copy, label, "val"])
    labels = _write_labels(data / "labels.csv", rows)
    run_dir = WORK / "audit-copies"
    shutil.rmtree(run_dir, ignore_errors=True)
    summary, _ = _audit(data, labels, weights, run_dir, 0)
    found = {tuple(sorted((r["path_a"], r["path_b"]))) for r in _rows(run_dir / "duplicates.csv")}
    default = {"threshold": summary["near_duplicate_threshold"], **_pair_stats(found, planted)}
    paths = [r["path"] for r in _rows(run_dir / "images.csv")]
    facts = all_facts([data / p for p in paths])
    exact = exact_pairs([f.digest for f in facts])
    tiny = np.stack([f.tiny for f in facts])
    sweep = []
    for t in args.thresholds:
        pairs = exact + near_pairs(tiny, t, {(p.a, p.b) for p in exact})
        sweep.append({"threshold": t, **_pair_stats({tuple(sorted((paths[p.a], paths[p.b]))) for p in pairs}, planted)})
    return {"planted": len(planted), "default": default, "sweep": sweep}


def _pair_stats(found: set, planted: set) -> dict:
    hit = len(found & planted)
    return {
        "found_share": hit / len(planted),
        "false_pair_share": (len(found) - hit) / max(1, len(found)),
        "pairs_flagged": len(found),
    }


def timing(args) -> list[dict]:
    """The whole ``vggtune audit`` command in a fresh process: wall time, its phases, peak memory (RSS)."""
    import resource

    out = []
    for arch, size, n in ((ARCH, SIZE, 300), ("vgg16", 224, args.timing_images)):
        data = WORK / f"timing-{n}"
        if not data.exists():
            rng = np.random.default_rng(0)
            for c in range(5):
                (data / f"class{c}").mkdir(parents=True)
                for i in range(n // 5):
                    pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(data / f"class{c}" / f"{i:04d}.jpg", quality=90)
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            cmd = [
                str(Path(sys.executable).with_name("vggtune")),
                "audit",
                f"data.root={data}",
                f"model={arch}",
                "model.weights=none",
                f"data.image_size={size}",
                "device=cpu",
                f"data.cache_dir={tmp}/cache",
                f"hydra.run.dir={tmp}/run",
            ]
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            summary = json.loads((Path(tmp) / "run" / "audit.json").read_text())
        r = {
            "arch": arch,
            "size": size,
            "images": n,
            "wall_s": wall,
            "phases_s": summary["seconds"],
            "per_image_ms": 1000 * wall / n,
            "peak_rss_mb": rss / 1024,
            "peak_rss_note": "max over this script's children so far" if rss == before else "this command's peak",
        }
        out.append(r)
        print(json.dumps(r), flush=True)
    return out


def _summarise(runs: list[dict]) -> list[dict]:
    table = []
    for noise in sorted({r["noise"] for r in runs}):
        rs = [r for r in runs if r["noise"] == noise]
        for method in [k for k, v in rs[0].items() if isinstance(v, dict) and "f1" in v]:  # each way of flagging
            row = {"noise": noise, "method": method}
            for k in ("precision", "recall", "f1"):
                values = [r[method][k] for r in rs]
                row[k] = statistics.mean(values)
                row[k + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            table.append(row)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--retrain", nargs="*", type=float, default=[0.2], help="noise levels to retrain at")
    p.add_argument("--train", type=int, default=60, help="training images per class")
    p.add_argument("--val", type=int, default=60, help="validation images per class")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--fix", default="relabel", help="audit.fix for cleaned_labels.csv: relabel (its default) | auto | drop"
    )
    p.add_argument(
        "--fastai", action="store_true", help="the peer: fastai fine_tune + top losses (pip install -e '.[peer]')"
    )
    p.add_argument("--overrides", nargs="*", default=[], help="more audit overrides, e.g. audit.vectors=fc7")
    p.add_argument("--copies", type=int, default=30, help="exact copies planted (and as many resized)")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.95, 0.97, 0.98, 0.99, 0.995, 0.998])
    p.add_argument("--timing", action="store_true", help="only time the command (run it alone)")
    p.add_argument("--timing-images", type=int, default=500)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    import logging

    logging.disable(logging.WARNING)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    meta = {
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "lscpu_model": next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), ""
        ),
        "lscpu_flags": next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Flags")), ""
        ),
    }
    if args.timing:
        result = {"meta": meta, "timing": timing(args)}
    else:
        weights = transfer.pretrain(WORK, "letters-a", ARCH, SIZE)
        root = transfer.write_split(WORK / f"data-letters-b-{args.train}x{args.val}", "letters-b", args.train, args.val)
        runs = label_noise(args, root, weights)
        result = {
            "meta": meta,
            "table": _summarise(runs),
            "runs": runs,
            "copies": copies(args, root, weights) if args.copies else None,
        }
        for row in result["table"]:
            print(
                f"| {row['noise']:.0%} | {row['method']} | {row['precision']:.3f} ± {row['precision_sd']:.3f} | "
                f"{row['recall']:.3f} ± {row['recall_sd']:.3f} | {row['f1']:.3f} ± {row['f1_sd']:.3f} |"
            )
        for noise in args.retrain:
            done = [r["retrain"] for r in runs if r["noise"] == noise and "retrain" in r]
            print(
                f"retrain at {noise:.0%} ({args.fix}): "
                + ", ".join(f"{k} {statistics.mean(d[k] for d in done):.3f}" for k in ("clean", "noisy", "cleaned"))
            )
        print(json.dumps(result["copies"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
