"""Deploying VGG on this CPU, side by side in one run: what int8 and bf16 cost in accuracy on a trained transfer
model (several seeds), every format's speed for VGG16 at 224 px with its share of the CPU's peak, and
`vggtune serve` on the int8 file beside a plain onnxruntime loop on the same file at 32 clients.

Parts (each can run alone; a run's JSON holds those it ran):

  accuracy  the bench's letters transfer task (bench/transfer.py): VGG16-BN pretrained here on letters K-O,
            fine-tuned with `vggtune train` on letters A-E at --size px (what a CPU bench affords: 224 px would
            take hours), then `vggtune benchmark` on its val images: fp32, bf16, int8 per seed.
  speed     VGG16 at 224 px, speed only: a checkpoint from a random VGG16 state dict (a one-epoch linear probe
            on a few images), `vggtune benchmark` with every format.
  serve     `vggtune serve model=<that int8 file>` (batching, max_batch_size 16) under --clients clients, against a
            plain loop that does the same work per image in one process: decode the JPEG, resize and crop
            (the served preprocessing), batches of 16 through one onnxruntime session.

Timings mean something only on a quiet machine: run it alone (`flock -x /work/cpu.lock ...` where others share
the machine). The processor and its flags are recorded with the figures.

    python bench/deploy.py --out bench/results/deploy-cpu-<date>.json
    python bench/deploy.py --parts speed serve --out ...        # the timings alone (minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import serve_load  # noqa: E402 - the load client and port helper
import transfer  # noqa: E402 - the generated transfer tasks and their pretrained VGGs

VGGTUNE = str(Path(sys.executable).parent / "vggtune")
WORK = Path(os.environ.get("VGGTUNE_BENCH_WORK", Path(tempfile.gettempdir()) / "vggtune-bench"))


def vggtune(*args: str, cwd: Path) -> None:
    proc = subprocess.run([VGGTUNE, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vggtune {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def benchmark(ckpt: Path, out: Path, *overrides: str) -> dict:
    vggtune("benchmark", f"ckpt={ckpt}", "data.subset=val", f"hydra.run.dir={out}", *overrides, cwd=WORK)
    return json.loads((out / "benchmark.json").read_text())


def accuracy_part(args) -> list[dict]:
    weights = transfer.pretrain(WORK, "letters-a", args.arch, args.size)
    data = transfer.write_split(WORK / f"data-letters-b-{args.train}x{args.val}", "letters-b", args.train, args.val)
    rows = []
    for seed in args.seeds:
        run = WORK / f"deploy-letters-{args.arch}-{args.size}px-seed{seed}"
        if not (run / "metrics.json").exists():
            vggtune(
                "train",
                f"data.root={data}",
                f"model={args.arch}",
                f"model.weights={weights}",
                f"data.image_size={args.size}",
                f"trainer.max_epochs={args.epochs}",
                f"seed={seed}",
                "logger=null",
                "callbacks.last_checkpoint=null",
                f"hydra.run.dir={run}",
                cwd=WORK,
            )
        result = benchmark(
            run / "checkpoints" / "best.ckpt",
            WORK / f"bench-accuracy-seed{seed}",
            "formats=[eager_fp32,eager_bf16,onnx_fp32,onnx_int8]",
            "latency_runs=3",
            "throughput_batches=1",
        )
        for r in result["formats"]:
            rows.append(
                {
                    "seed": seed,
                    "images": result["data"]["images"],
                    **{k: r[k] for k in ("format", "acc", "f1", "agreement", "accuracy_drop_points", "file_mb")},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        (run / "checkpoints" / "best.ckpt").unlink()  # 0.5 GB each; metrics.json says the run happened
    return rows


def speed_part(args) -> dict:
    weights = WORK / "vgg16-random.pth"  # speed only: the weights do not change the arithmetic
    if not weights.exists():
        import torch
        import torchvision

        torch.manual_seed(0)
        torch.save(torchvision.models.vgg16().state_dict(), weights)
    data = transfer.write_split(WORK / "data-letters-b-6x6", "letters-b", 6, 6)
    run = WORK / "deploy-vgg16-224px"
    if not (run / "metrics.json").exists():
        vggtune(
            "train",
            f"data.root={data}",
            "model=vgg16",
            f"model.weights={weights}",
            "data.image_size=224",
            "finetune=linear_probe",
            "trainer.max_epochs=1",
            "data.batch_size=8",
            "logger=null",
            "callbacks.last_checkpoint=null",
            f"hydra.run.dir={run}",
            cwd=WORK,
        )
    result = benchmark(run / "checkpoints" / "best.ckpt", WORK / "bench-speed-224", f"latency_runs={args.latency_runs}")
    for r in result["formats"]:
        print(
            json.dumps({k: r[k] for k in ("format", "file_mb", "p50_ms", "p99_ms", "images_per_s", "peak_share")}),
            flush=True,
        )
    return result


def plain_loop(model: Path, body: bytes, images: int, batch: int = 16) -> dict:
    """What the server does per image, in one process: decode, resize and crop, [0, 1]; batches through onnxruntime."""
    import onnxruntime
    import torch

    from vggtune.data.transforms import unit_transform
    from vggtune.model.arch import Preprocessing

    meta = json.loads(model.with_name(model.name + ".json").read_text())
    prep = Preprocessing(meta["image_size"], meta["resize_size"], tuple(meta["mean"]), tuple(meta["std"]))
    transform = unit_transform(prep)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def step(n: int) -> None:
        x = torch.stack([transform(Image.open(io.BytesIO(body)).convert("RGB")) for _ in range(n)])
        session.run(None, {meta["input_name"]: x.numpy()})

    step(batch)  # warm-up
    start, done = time.perf_counter(), 0
    while done < images:
        n = min(batch, images - done)
        step(n)
        done += n
    wall = time.perf_counter() - start
    return {"images": done, "batch": batch, "wall_s": round(wall, 2), "images_per_s": round(done / wall, 2)}


def serve_part(args, int8: Path) -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (448, 448, 3), dtype=np.uint8)).save(buf, format="JPEG")
    body = buf.getvalue()
    port = serve_load.free_port()
    proc = subprocess.Popen(
        [
            VGGTUNE,
            "serve",
            f"model={int8}",
            f"port={port}",
            "device=cpu",
            "max_batch_size=16",
            f"hydra.run.dir={WORK / f'serve-{port}'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        serve_load.wait_ready(port)
        serve_load.load(port, body, 4, 16, 60)  # warm-up
        rounds = []
        for _ in range(args.rounds):  # alternated: a drifting load hits both alike
            served = serve_load.load(port, body, args.clients, args.requests, 300)
            loop = plain_loop(int8, body, args.requests)
            rounds.append(
                {
                    "serve": served,
                    "plain_loop": loop,
                    "ratio": round(served["requests_per_s"] / loop["images_per_s"], 3),
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    ratios = sorted(r["ratio"] for r in rounds)
    return {"model": str(int8), "clients": args.clients, "rounds": rounds, "median_ratio": ratios[len(ratios) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["accuracy", "speed", "serve"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--arch",
        default="vgg16_bn",
        help="the accuracy part's VGG (plain vgg16 does not learn from "
        "random init in the bench's pretraining: chance accuracy after 4 epochs at 64 px)",
    )
    ap.add_argument("--size", type=int, default=48, help="image size of the accuracy part's transfer task")
    ap.add_argument("--train", type=int, default=20, help="training images per class")
    ap.add_argument("--val", type=int, default=100, help="validation images per class")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    from vggtune.use.quantize import cpu_record

    results = {"cpu": cpu_record(), "args": {k: str(v) for k, v in vars(args).items()}}
    if "accuracy" in args.parts:
        results["accuracy"] = accuracy_part(args)
    if "speed" in args.parts or "serve" in args.parts:
        speed = speed_part(args)
        results["speed"] = speed
        if "serve" in args.parts:
            int8 = Path(next(r["file"] for r in speed["formats"] if r["format"] == "onnx_int8"))
            results["serve"] = serve_part(args, int8)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
