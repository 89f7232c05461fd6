"""The wait before anything happens: ``vggtune`` start-up, this tree beside an earlier commit of it.

    git archive <commit> src conf | tar -x -C /tmp/before  # done by --before (conf/ into src/vggtune/conf)
    python bench/startup.py --before 669e419 --repeats 3 --out bench/results/startup-cpu-<date>.json

Each repeat runs, for each version in turn (so that a busier minute of the machine hits both), in a
fresh process: ``import vggtune.cli`` (timed inside), ``vggtune train data.root=D --cfg job`` (wall),
and a one-epoch ``vggtune train`` of the few-shot task (wall, and seconds from the command to the
first epoch's "Epoch 0: training ..." line, logged just before its first step). The earlier version
runs from its exported ``src/`` on PYTHONPATH, in the same environment. Run it alone on the machine
(``flock -x /work/cpu.lock``): the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import transfer  # noqa: E402
from recipe import WORK, _cpu  # noqa: E402

VGGTUNE = [sys.executable, "-m", "vggtune"]
FIRST_STEP = "Epoch 0: training"


def _env(src: str | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if src:
        env["PYTHONPATH"] = src  # before the editable install's finder: the earlier code is imported
    return env


def import_s(src: str | None) -> float:
    code = "import time; t = time.perf_counter(); import vggtune.cli; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(src), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cfg_job_s(src: str | None, data: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [*VGGTUNE, "train", f"data.root={data}", "--cfg", "job"], env=_env(src), capture_output=True, check=True
    )
    return time.perf_counter() - t0


def train_s(src: str | None, data: Path, weights: Path, arch: str, size: int) -> tuple[float, float]:
    """(seconds to the first epoch's start line, the whole command's seconds)."""
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        cmd = [
            *VGGTUNE,
            "train",
            f"data.root={data}",
            f"model={arch}",
            f"model.weights={weights}",
            f"data.image_size={size}",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp}/run",
        ]
        t0 = time.perf_counter()
        child = subprocess.Popen(
            cmd, env=_env(src), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        first, lines = None, []
        for line in child.stdout:
            lines.append(line)
            if first is None and FIRST_STEP in line:
                first = time.perf_counter() - t0
        child.wait()
        wall = time.perf_counter() - t0
        if child.returncode != 0 or first is None:
            raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{''.join(lines)[-3000:]}")
    return first, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="the commit to compare with (exported with git archive)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch", default="vgg11_bn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--weights", default=None, help="a state-dict file (default: the recipe bench's pretrained one)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    # Start-up does not depend on the weights' values: any file of the architecture's shape times the same.
    weights = Path(args.weights) if args.weights else transfer.pretrain(WORK, "letters-a", args.arch, args.size)
    data = transfer.write_split(WORK / "data-letters-b-20x160", "letters-b", 20, 160)  # 100 train, 800 val
    before = Path(tempfile.mkdtemp(dir=WORK, prefix="before-"))
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", args.before, "src", "conf"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    # Its configs too, where the package finds them: else the editable install's finder serves vggtune.conf
    # from this tree, whose keys the earlier code does not take.
    (before / "conf").rename(before / "src" / "vggtune" / "conf")
    versions = {f"before ({args.before})": str(before / "src"), "after (this tree)": None}

    runs = []
    for repeat in range(args.repeats):
        for name, src in versions.items():
            first, wall = train_s(src, data, weights, args.arch, args.size)
            r = {"version": name, "repeat": repeat, "import_cli_s": import_s(src), "cfg_job_s": cfg_job_s(src, data)}
            r |= {"first_epoch_line_s": first, "train_1_epoch_s": wall}
            runs.append(r)
            print(json.dumps(r), flush=True)
    keys = ("import_cli_s", "cfg_job_s", "first_epoch_line_s", "train_1_epoch_s")
    table = []
    print("\n| version | import vggtune.cli s | --cfg job s | to the first epoch's line s | 1-epoch train s |")
    print("|---|---:|---:|---:|---:|")
    for name in versions:
        done = [r for r in runs if r["version"] == name]
        row = {"version": name}
        for k in keys:
            values = [r[k] for r in done]
            row[k] = statistics.mean(values)
            row[k + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(row)
        print(f"| {name} | " + " | ".join(f"{row[k]:.2f} ± {row[k + '_sd']:.2f}" for k in keys) + " |")
    if args.out:
        meta = {"argv": sys.argv[1:], "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
        meta |= {"cpu": _cpu(), "data": "letters-b, 100 train / 800 val images, 32 px", "arch": args.arch}
        Path(args.out).write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
