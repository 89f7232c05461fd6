"""Bounded overload of `vggtune serve` on the loopback: its capacity, then 4x that for 30 s, then a normal load.

Per model: a checkpoint from a 1-step run (random init, as in serve_load.py), one server with the
shipped overload settings (max_queue=32, timeout=30, max_batch_size=16). Capacity is the
requests/s that closed-loop clients (serve_load.load: `max_queue` threads, keep-alive) get
answered. The overload is open-loop: requests start at 4x that rate whatever the answers (each on
its own connection, from one asyncio loop, as independent users would), so the queue must be
bounded by the server. Then half the capacity, open-loop, for 15 s. Each request has a client
deadline (timeout + 30 s): one without an answer by then counts as hung. Recorded: the status of
every request, p50/p99 of the 200s, and the RSS of all the server's processes before the overload
and after the normal load. The clients share the 2 cores with the server.

    python bench/serve_overload.py --out bench/results/serve-overload-cpu-<date>.json
    python bench/serve_overload.py --models vgg11_bn:64 --overload-s 10      # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import load, make_checkpoint, start

TIMEOUT_S = 30  # the server's timeout (conf/serve.yaml)
MAX_QUEUE = 32  # conf/serve.yaml's default, given explicitly so that the record says it


async def _post(port: int, body: bytes, deadline: float) -> tuple[str, float]:
    """One POST on its own connection: (status or what went wrong, seconds)."""
    began = time.perf_counter()

    async def exchange() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()  # headers and body, to the close
            return status_line.split()[1].decode() if status_line else "closed without an answer"
        finally:
            writer.close()

    try:
        status = await asyncio.wait_for(exchange(), deadline)
    except asyncio.TimeoutError:
        status = "hung"
    except OSError as e:
        status = f"connection error: {e.strerror or e}"
    return status, time.perf_counter() - began


async def _open_loop(port: int, body: bytes, rate: float, seconds: float, deadline: float) -> list[tuple[str, float]]:
    """Requests started every 1/``rate`` s for ``seconds``, whatever the answers; all of them, answered or not."""
    loop, tasks = asyncio.get_running_loop(), []
    t0 = loop.time()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        tasks.append(asyncio.create_task(_post(port, body, deadline)))
    return await asyncio.gather(*tasks)


def summarize(results: list[tuple[str, float]], seconds: float) -> dict:
    """Counts by status and the latency of the 200s."""
    ok = sorted(t for s, t in results if s == "200")
    return {
        "sent": len(results),
        "sent_per_s": round(len(results) / seconds, 2),
        "status": dict(Counter(s for s, _ in results)),
        "answered_200_per_s": round(len(ok) / seconds, 2),
        "p50_200_s": round(statistics.median(ok), 3) if ok else None,
        "p99_200_s": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 3) if ok else None,
        "max_200_s": round(ok[-1], 3) if ok else None,
        "slowest_any_s": round(max(t for _, t in results), 3) if results else None,
    }


def server_rss_mb(pid: int) -> dict:
    """Resident memory of the server and each of its processes (children of every thread), MB."""

    def tree(p: int) -> list[int]:
        kids = [int(c) for f in Path(f"/proc/{p}/task").glob("*/children") for c in f.read_text().split()]
        return [p] + [d for k in kids for d in tree(k)]

    each = {}
    for p in tree(pid):
        cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        kind = (
            "main"
            if p == pid
            else "model worker"
            if b"spawn_main" in cmd
            else "resource tracker"
            if b"resource_tracker" in cmd
            else "forked (HTTP or queue manager)"
        )
        rss = next(
            int(line.split()[1])
            for line in Path(f"/proc/{p}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        each[f"{p} {kind}"] = round(rss / 1024, 1)
    return {"total": round(sum(each.values()), 1), "processes": each}


def stats(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/stats")
    return json.loads(c.getresponse().read())


def wait_idle(port: int, limit_s: float) -> float:
    """Seconds until the server has no request in flight (at most ``limit_s``)."""
    began = time.monotonic()
    while stats(port)["requests_in_flight"] and time.monotonic() - began < limit_s:
        time.sleep(0.2)
    return round(time.monotonic() - began, 1)


def bench_model(spec: str, work: Path, args) -> dict:
    arch, size = spec.split(":")
    ckpt = make_checkpoint(work, arch, int(size))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (int(size) * 2, int(size) * 2, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    body = buf.getvalue()
    proc, port = start(ckpt, 16, work, [f"max_queue={MAX_QUEUE}", f"timeout={TIMEOUT_S}", *args.serve_args])
    deadline = TIMEOUT_S + 30
    record: dict = {
        "model": spec,
        "max_batch_size": 16,
        "max_queue": MAX_QUEUE,
        "timeout_s": TIMEOUT_S,
        "client_deadline_s": deadline,
    }
    try:
        load(port, body, 4, 16, 60)  # warm-up
        capacity = load(port, body, MAX_QUEUE, 100_000, args.capacity_s)
        rate = capacity["requests_per_s"]
        record["capacity"] = capacity
        wait_idle(port, 120)
        record["rss_mb_before"] = server_rss_mb(proc.pid)
        print(
            json.dumps({"model": spec, "capacity_per_s": rate, "rss_mb_before": record["rss_mb_before"]["total"]}),
            flush=True,
        )
        over = asyncio.run(_open_loop(port, body, args.factor * rate, args.overload_s, deadline))
        record["overload"] = {"factor": args.factor, "seconds": args.overload_s, **summarize(over, args.overload_s)}
        record["overload"]["drained_after_s"] = wait_idle(port, 120)
        print(json.dumps(record["overload"]), flush=True)
        normal = asyncio.run(_open_loop(port, body, rate / 2, args.normal_s, deadline))
        record["normal_after"] = {"factor": 0.5, "seconds": args.normal_s, **summarize(normal, args.normal_s)}
        print(json.dumps(record["normal_after"]), flush=True)
        wait_idle(port, 120)
        time.sleep(2)
        record["rss_mb_after"] = server_rss_mb(proc.pid)
        record["server_stats"] = stats(port)
        every = [s for s, _ in over + normal]
        record["verdict"] = {
            "every_request_200_503_or_504": all(s in ("200", "503", "504") for s in every),
            "none_hung": "hung" not in every,
            "p99_of_accepted_within_timeout": (record["overload"]["p99_200_s"] or 0) <= TIMEOUT_S,
            "normal_load_all_200": all(s == "200" for s, _ in normal),
            "rss_change_mb": round(record["rss_mb_after"]["total"] - record["rss_mb_before"]["total"], 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        record["exit_status_after_sigterm"] = proc.wait(timeout=120)
        ckpt.unlink()
    print(json.dumps(record["verdict"]), flush=True)
    return record


def lscpu() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {"model": fields.get("Model name", "").strip(), "flags": fields.get("Flags", "").strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vgg11_bn:64"], help="arch:image_size, e.g. vgg16:224")
    ap.add_argument("--factor", type=float, default=4, help="the overload, in multiples of the measured capacity")
    ap.add_argument("--capacity-s", type=float, default=15)
    ap.add_argument("--overload-s", type=float, default=30)
    ap.add_argument("--normal-s", type=float, default=15)
    ap.add_argument("--serve-args", nargs="*", default=[], help="more `vggtune serve` overrides")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results = {
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "cpu": lscpu(),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
        "serve_args": args.serve_args,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            results["models"].append(bench_model(spec, Path(tmp), args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
