"""Load test of `vggtune serve` on the loopback: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients,
with dynamic batching (max_batch_size=16) and without (max_batch_size=1).

Bounded: each case sends a fixed number of requests and stops at a time cap, whatever happens; the
server is stopped with SIGTERM after each model. The checkpoint is made here (a 1-step training run
from random init: the weights do not matter for speed). Clients are threads in this process, on
the same machine as the server: on 2 cores they take CPU from it, so the absolute figures are low;
the ratio batching / no batching at the same load is the point. Both servers run side by side and the
cases alternate, so that a load drifting on a shared machine hits both alike; medians over --rounds.

    python bench/serve_load.py --out bench/results/serve-cpu-<date>.json
    python bench/serve_load.py --models vgg11_bn:64 --clients 1 8 --requests 40   # quicker
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

VGGTUNE = [str(Path(sys.executable).parent / "vggtune")]


def make_checkpoint(work: Path, arch: str, size: int) -> Path:
    data = work / "data"
    rng = np.random.default_rng(0)
    for c in range(3):
        (data / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (size + 8, size + 8, 3), dtype=np.uint8)).save(
                data / f"c{c}" / f"{i}.jpg"
            )
    run = work / f"run-{arch}-{size}"
    subprocess.run(
        [
            *VGGTUNE,
            "train",
            f"data.root={data}",
            f"model={arch}",
            "model.weights=none",
            f"data.image_size={size}",
            "finetune=full",
            "trainer.max_epochs=1",
            "data.batch_size=4",
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            "data.num_workers=0",
            "callbacks.last_checkpoint=null",
            "logger=null",
            f"hydra.run.dir={run}",
        ],
        check=True,
        capture_output=True,
    )
    return run / "checkpoints" / "best.ckpt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt: Path, batch: int, work: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *VGGTUNE,
            "serve",
            f"ckpt={ckpt}",
            f"port={port}",
            "device=cpu",
            f"max_batch_size={batch}",
            "batch_timeout=0.01",
            f"hydra.run.dir={work / f'serve-{port}'}",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port)
    except RuntimeError:
        proc.kill()
        raise
    return proc, port


def wait_ready(port: int, timeout: float = 240) -> None:
    """Until the server on ``port`` answers ``GET /health`` with 200 (a RuntimeError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def load(port: int, body: bytes, clients: int, requests: int, cap_s: float) -> dict:
    """``requests`` POSTs by ``clients`` threads (keep-alive connections), stopped at ``cap_s`` seconds."""
    latencies, failures, lock = [], [], threading.Lock()
    remaining = [requests]
    stop_at = time.monotonic() + cap_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                error = None if r.status == 200 else f"HTTP {r.status}"
            except OSError as e:
                error, conn = str(e), http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - t) if error is None else failures.append(error)

    start_t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_t
    lat = sorted(latencies)
    return {
        "clients": clients,
        "answered": len(lat),
        "failed": len(failures),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg11_bn:64", "vgg16:224"], help="arch:image_size")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=96, help="per case (at most; see --cap)")
    ap.add_argument("--cap", type=float, default=60, help="seconds per case, at most")
    ap.add_argument("--rounds", type=int, default=2, help="alternated repeats of each case")
    ap.add_argument("--serve-args", nargs="*", default=[], help="more `vggtune serve` overrides, e.g. fast_queue=true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "serve_args": args.serve_args, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for spec in args.models:
            arch, size = spec.split(":")
            ckpt = make_checkpoint(work, arch, int(size))
            buf = io.BytesIO()
            Image.fromarray(
                np.random.default_rng(1).integers(0, 255, (int(size) * 2, int(size) * 2, 3), dtype=np.uint8)
            ).save(buf, format="JPEG")
            # Both servers up at once, cases alternated (A B A B): a load that drifts (a shared machine)
            # hits both alike. An idle server costs next to nothing.
            servers = {batch: start(ckpt, batch, work, args.serve_args) for batch in (1, 16)}
            try:
                for _, port in servers.values():
                    load(port, buf.getvalue(), 4, 8, 30)  # warm-up
                for clients in args.clients:
                    for _ in range(args.rounds):
                        for batch, (_, port) in servers.items():
                            r = {
                                "model": spec,
                                "max_batch_size": batch,
                                **load(port, buf.getvalue(), clients, args.requests, args.cap),
                            }
                            results["cases"].append(r)
                            print(json.dumps(r), flush=True)
            finally:
                for proc, _ in servers.values():
                    proc.send_signal(signal.SIGTERM)
                for proc, _ in servers.values():
                    proc.wait(timeout=90)
                    results.setdefault("exit_status_after_sigterm", []).append(proc.returncode)
            ckpt.unlink()
    summary = []
    for spec in args.models:
        for clients in args.clients:
            rate = {
                b: round(
                    statistics.median(
                        c["requests_per_s"]
                        for c in results["cases"]
                        if c["model"] == spec and c["clients"] == clients and c["max_batch_size"] == b
                    ),
                    2,
                )
                for b in (1, 16)
            }
            failed = {
                b: sum(
                    c["failed"]
                    for c in results["cases"]
                    if c["model"] == spec and c["clients"] == clients and c["max_batch_size"] == b
                )
                for b in (1, 16)
            }
            summary.append(
                {
                    "model": spec,
                    "clients": clients,
                    "requests_per_s": rate,
                    "failed": failed,
                    "batching_speedup": round(rate[16] / rate[1], 2) if rate[1] else None,
                }
            )
            print(json.dumps(summary[-1]))
    results["summary"] = summary
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
