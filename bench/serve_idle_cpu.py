"""CPU an idle batching model worker burns: LitServe's BatchedLoop vs vggtune's IdleWaitBatchedLoop.

Both loops' ``get_batch_requests`` run against an empty ``multiprocessing.Manager`` queue (what
LitServe's workers read) for --seconds; the CPU time of this process and of the manager process
is read from /proc before and after. No model and no server: the request-collection code path
alone, which is all an idle worker runs.

    python bench/serve_idle_cpu.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import litserve as ls
from litserve.loops.simple_loops import BatchedLoop

from vggtune.serve.loop import IdleWaitBatchedLoop


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Api(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, x):
        return x


def idle_cpu(loop, seconds: float) -> dict:
    manager = mp.Manager()
    queue = manager.Queue()
    api = _Api(max_batch_size=16, batch_timeout=0.01)
    api.request_timeout = 30
    manager_pid = manager._process.pid
    before = cpu_seconds(os.getpid()), cpu_seconds(manager_pid)
    end, calls = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        loop.get_batch_requests(api, queue, transport=None)
        calls += 1
    after = cpu_seconds(os.getpid()), cpu_seconds(manager_pid)
    manager.shutdown()
    worker, mgr = after[0] - before[0], after[1] - before[1]
    return {
        "loop": type(loop).__name__,
        "seconds": seconds,
        "collect_calls": calls,
        "worker_cpu_s": round(worker, 2),
        "manager_cpu_s": round(mgr, 2),
        "share_of_one_core": round((worker + mgr) / seconds, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    for loop in (BatchedLoop(), IdleWaitBatchedLoop()):
        print(json.dumps(idle_cpu(loop, args.seconds)))


if __name__ == "__main__":
    main()
