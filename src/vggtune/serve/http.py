"""The HTTP side of ``vggtune serve``, in front of LitServe: every way of sending an image becomes one JSON body.

LitServe hands ``decode_request`` the parsed JSON (or a form), in a model worker process. A raw
image body (``curl --data-binary @cat.jpg``) would fail its JSON parsing with a 500, and an uploaded
file is not something it can pass between processes. :class:`RequestAdapter` (plain ASGI, outermost)
therefore reads the body once, refuses what is too large or of the wrong type with a 4xx and a
one-line JSON error, and passes on ``{"images": [<base64>...], "top_k": .., "explain": ..}``. It also
counts the requests in flight, so that SIGTERM can wait for them (:func:`drain_then_stop`), and
bounds them: past ``max_queue`` a request gets a 503 with ``Retry-After`` at once (LitServe 0.2.19
queues without a bound), instead of waiting behind the others.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import multiprocessing as mp
import threading
import time
from typing import Protocol
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from vggtune.serve.requests import MAX_IMAGES

log = logging.getLogger(__name__)
OPTION_KEYS = ("top_k", "explain")


class Counters:
    """Shared between the HTTP processes (forked after this is made) and the main process."""

    def __init__(self, workers: int = 1):
        self.in_flight = mp.Value("i", 0)
        self.served = mp.Value("i", 0)
        self.refused = mp.Value("i", 0)  # 503s past max_queue
        self.latency = mp.Value("d", 0.0)  # moving average of a 200's seconds, for Retry-After
        self.worker_deaths = mp.Array("i", workers)  # per model worker, counted by faults.RestartingServer
        self.draining = mp.Event()

    def admit(self, max_queue: int | None) -> bool:
        """Count one more request in flight, unless ``max_queue`` are already (then count it refused)."""
        with self.in_flight.get_lock():
            if max_queue and self.in_flight.value >= max_queue:
                with self.refused.get_lock():
                    self.refused.value += 1
                return False
            self.in_flight.value += 1
            return True

    def done(self, seconds: float | None) -> None:
        """One admitted request answered; ``seconds``: how long it took, for a 200 (else None)."""
        with self.in_flight.get_lock():
            self.in_flight.value -= 1
            self.served.value += 1
            if seconds is not None:
                self.latency.value = seconds if self.latency.value == 0 else 0.9 * self.latency.value + 0.1 * seconds

    def retry_after(self) -> str:
        """Whole seconds a client should wait before sending again: about what a request takes now, at
        least 1 (by then the queue has turned over)."""
        return str(max(1, math.ceil(self.latency.value)))

    def stats(self) -> dict:
        """What ``GET /stats`` answers."""
        return {
            "requests_in_flight": self.in_flight.value,
            "requests_served": self.served.value,
            "requests_refused": self.refused.value,
            "worker_restarts": sum(self.worker_deaths[:]),
            "draining": self.draining.is_set(),
        }


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class RequestAdapter:
    """ASGI middleware: ``POST <path>`` bodies (JSON, an upload in field ``file``, or raw image bytes) -> JSON."""

    def __init__(self, app, path: str, max_bytes: int, counters: Counters, max_queue: int | None = None, watchdog=None):
        self.app, self.path, self.max_bytes, self.counters = app, path, max_bytes, counters
        self.max_queue, self.watchdog = max_queue, watchdog  # watchdog: a faults.Watchdog, started in this process

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        c = self.counters
        if c.draining.is_set():
            return await self._refuse(
                scope, receive, send, _error(503, "the server is shutting down: send the request to another instance")
            )
        if not c.admit(self.max_queue):
            return await self._refuse(
                scope,
                receive,
                send,
                _error(
                    503,
                    f"the server is busy ({self.max_queue} requests in flight, its max_queue): send the request "
                    "again after Retry-After seconds",
                    {"Retry-After": c.retry_after()},
                ),
            )
        if self.watchdog is not None:
            self.watchdog.start()
        began, status = time.monotonic(), []

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            body = await self._adapt(scope, receive)
            if isinstance(body, JSONResponse):
                return await body(scope, receive, send)
            await self.app(_as_json(scope, body), _replay(body), send_noting_status)
        finally:
            c.done(time.monotonic() - began if status == [200] else None)

    async def _refuse(self, scope, receive, send, answer: JSONResponse) -> None:
        # The body is read first (and dropped): closing a connection with bytes still unread makes the kernel
        # reset it, and a client still sending a large image then sees "connection reset" instead of the 503
        # (measured: 92 of 680 requests under bench/serve_overload.py with VGG16's 448 px JPEGs).
        await _read_body(receive, self.max_bytes)
        await answer(scope, receive, send)

    async def _adapt(self, scope, receive) -> bytes | JSONResponse:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = (
            f"over the server's limit of {self.max_bytes / 1e6:g} MB: send a smaller file (or start the "
            "server with a larger max_request_mb)"
        )
        if int(headers.get("content-length", "0") or 0) > self.max_bytes:
            return _error(413, f"request body of {int(headers['content-length']) / 1e6:.1f} MB is {limit}")
        body = await _read_body(receive, self.max_bytes)
        if body is None:
            return _error(413, f"request body is {limit}")
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        options = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        options = {k: v for k, v in options.items() if k in OPTION_KEYS}
        if kind == "application/json":
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return _error(
                    400, f'malformed JSON ({e.msg if hasattr(e, "msg") else e}): send {{"images": ["<base64>", ...]}}'
                )
            if isinstance(payload, dict):
                payload = {**options, **payload}
            return json.dumps(payload).encode()
        if kind == "multipart/form-data":
            return await _from_form(scope, body, options)
        if kind.startswith("image/") or kind == "application/octet-stream":
            return json.dumps({**options, "images": [base64.b64encode(body).decode()]}).encode()
        return _error(
            415,
            f"content type '{kind or 'none'}' is not accepted: send an image (image/jpeg, image/png, "
            '...), a multipart upload in the field \'file\', or JSON {"images": ["<base64>"]}',
        )


async def _read_body(receive, max_bytes: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``max_bytes``."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _from_form(scope, body: bytes, options: dict) -> bytes | JSONResponse:
    try:
        form = await Request(scope, _replay(body)).form(max_files=MAX_IMAGES, max_fields=16)
    except MultiPartException as e:
        return _error(400, f"malformed multipart upload ({e.message}): send the image in the field 'file'")
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        return _error(400, "the upload has no file in the field 'file': curl -F file=@image.jpg ...")
    images = [base64.b64encode(await f.read()).decode() for f in files]
    fields = {k: v for k, v in form.items() if k in OPTION_KEYS and isinstance(v, str)}
    return json.dumps({**options, **fields, "images": images}).encode()


def _as_json(scope, body: bytes) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {**scope, "headers": headers}


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def install_routes(app: FastAPI, page: str, counters: Counters, auth=None) -> None:
    """The web page at ``/``, ``GET /stats`` (behind ``auth``, LitServe's API-key check, as /info is), and errors
    as ``{"error": "..."}`` like the rest of the API."""
    # LitServe registers "GET /" ("litserve running"); the first matching route wins, so ours goes first.
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/"]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/stats", dependencies=[Depends(auth)] if auth else [])
    async def stats() -> dict:
        return counters.stats()

    @app.exception_handler(StarletteHTTPException)
    async def one_line_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


class _Settable(Protocol):
    """An event to set: a threading.Event, or LitServe's shutdown event (a multiprocessing manager's proxy)."""

    def set(self) -> None: ...


def drain_then_stop(counters: Counters, stop: _Settable, timeout: float) -> None:
    """After SIGTERM: refuse new requests (503), wait for those in flight (at most ``timeout`` s), then stop."""
    counters.draining.set()

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while counters.in_flight.value > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if counters.in_flight.value > 0:
            log.warning("%d requests still in flight after %g s: stopping anyway", counters.in_flight.value, timeout)
        stop.set()

    threading.Thread(target=wait, name="vggtune-drain", daemon=True).start()
