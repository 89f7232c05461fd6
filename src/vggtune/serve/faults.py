"""What ``vggtune serve`` does when the model cannot keep up, or its worker process dies.

LitServe 0.2.19 answers a request that waited past ``timeout`` with a 504, but only when a model
worker takes it off the queue: a client behind a long queue waits for minutes before it hears
so. On ``kill -9`` of a model worker, it either shuts the whole server down (its default since
LitServe PR #532: the HTTP processes then wait out uvicorn's 30 s graceful shutdown for requests
that can no longer be answered, and /health hangs meanwhile), or with ``restart_workers=True``
(PR #624) starts the worker again, but the requests the dead worker had taken are never
answered: its monitor fails them in the main process's response buffer, while with HTTP
processes (``api_server_worker_type="process"``, the default) each request waits in the buffer of
the process that received it.

``vggtune serve`` therefore restarts workers (LitServe's option) and runs a :class:`Watchdog` in
each HTTP process, over that process's buffer: a request no worker has taken within ``timeout``
gets its 504 then (the worker later drops it from its batch, as LitServe does with a request that
waited too long, so it is never computed), and the requests a dead worker had taken get a 503 as
soon as its restart begins. A request a worker has taken runs to the end.
"""

from __future__ import annotations

import asyncio
import logging
import time

import litserve as ls
from fastapi import HTTPException
from litserve.utils import LitAPIStatus

from vggtune.serve.http import Counters

log = logging.getLogger(__name__)
MONITOR_INTERVAL_S = 0.5  # LitServe checks its workers every 2 s; a dead one is noticed sooner


class RestartingServer(ls.LitServer):
    """A LitServer that counts each model worker's deaths (in :class:`Counters`) before starting it again."""

    counters: Counters | None = None
    stopping = False  # set on SIGTERM and Ctrl-C: a worker that stops then is not restarted

    def __init__(self, *args, **kwargs):
        super().__init__(*args, restart_workers=True, **kwargs)
        self.monitor_internal = MONITOR_INTERVAL_S  # sic: LitServe's name

    def worker_count(self) -> int:
        """How many model workers LitServe starts for the one API (devices x workers_per_device)."""
        return sum(len(self._inference_workers_config_for_api(api.api_path)) for api in self.litapi_connector)

    def launch_single_inference_worker(self, lit_api, worker_id: int):
        # LitServe's monitor calls this only to replace a worker that died; the first ones start elsewhere.
        if self.stopping:  # and it goes on while the server stops after Ctrl-C: keep the stopped worker
            return self.inference_workers[worker_id]
        log.error("model worker %d died: starting it again (/health answers 503 until it is ready)", worker_id)
        if self.counters is not None:
            with self.counters.worker_deaths.get_lock():
                self.counters.worker_deaths[worker_id] += 1
        return super().launch_single_inference_worker(lit_api, worker_id)


class Watchdog:
    """Answers the requests LitServe would leave waiting, in the HTTP process it runs in (see the module)."""

    def __init__(self, buffer: dict, counters: Counters, timeout: float | bool, interval: float = 0.1):
        self.buffer, self.counters, self.timeout, self.interval = buffer, counters, timeout, interval
        self._task: asyncio.Task | None = None
        self._seen: dict[str, float] = {}
        self._deaths: list[int] = []

    def start(self) -> None:
        """Start watching in this process's event loop (once; the HTTP adapter calls it for each request)."""
        if self._task is None:
            self._deaths = self.counters.worker_deaths[:]  # a list
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vggtune-watchdog")

    async def _run(self) -> None:
        while True:
            try:
                self.sweep(time.monotonic())
            except Exception:  # a bug here must not stop the watching
                log.exception("serve watchdog: sweep failed")
            await asyncio.sleep(self.interval)

    def sweep(self, now: float) -> None:
        """One look at the requests waiting for an answer: fail those of dead workers and those queued too long."""
        deaths = self.counters.worker_deaths[:]
        dead = {w for w, (before, after) in enumerate(zip(self._deaths, deaths)) if after > before}
        self._deaths = deaths
        seen = {}
        retry = self.counters.retry_after()
        for uid, item in list(self.buffer.items()):
            if item.event.is_set():
                continue
            first = seen[uid] = self._seen.get(uid, now)
            if item.worker_id is not None and item.worker_id in dead:
                _answer(
                    item,
                    HTTPException(
                        503,
                        "the model worker died while computing this request; it is being "
                        "started again: send the request again",
                        headers={"Retry-After": retry},
                    ),
                )
            elif item.worker_id is None and self.timeout and now - first >= self.timeout:
                _answer(
                    item,
                    HTTPException(
                        504,
                        f"no model worker took this request within timeout={self.timeout:g} s "
                        "(the server is overloaded): send it again later, or start the "
                        "server with a larger timeout or a smaller max_queue",
                        headers={"Retry-After": retry},
                    ),
                )
        self._seen = seen


def _answer(item, error: HTTPException) -> None:
    # What LitServe's response loop does with a worker's error: the request's handler then raises it.
    item.response = (error, LitAPIStatus.ERROR)
    item.event.set()
