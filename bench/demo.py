"""The offline demo as a new user runs it: `vggtune train experiment=demo` in a fresh folder, per seed.

Each run pretrains vgg11_bn's conv layers on letters K-O (the demo's stand-in for ImageNet weights),
fine-tunes them on letters A-E (30 training, 30 validation images a class) with the default recipe,
then trains the same network from random init on the same images. Recorded per seed: the whole
command's wall time (a first run: data generated, pretraining included) and both validation
accuracies, read from the two metrics.json files.

    python bench/demo.py --seeds 0 1 2 --out bench/results/demo-cpu-2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(seed: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"vggtune-demo-{seed}-"))
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "vggtune"),
                "train",
                "experiment=demo",
                f"seed={seed}",
                "hydra.run.dir=run",
            ],
            cwd=work,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        pre = json.loads((work / "run" / "metrics.json").read_text())["metrics"]
        scratch = json.loads((work / "run" / "from_scratch" / "metrics.json").read_text())["metrics"]
        row = {
            "seed": seed,
            "wall_s": round(wall, 1),
            "val_acc_pretrained": pre["val/acc"],
            "val_acc_from_scratch": scratch["val/acc"],
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [run(s) for s in args.seeds]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "runs": rows,
    }
    for key in ("wall_s", "val_acc_pretrained", "val_acc_from_scratch"):
        values = torch.tensor([r[key] for r in rows], dtype=torch.float64)
        result[key] = {
            "mean": round(values.mean().item(), 3),
            "std": round(values.std().item(), 3) if len(rows) > 1 else 0.0,
        }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
