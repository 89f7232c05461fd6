"""`vggtune serve` under overload and faults, over real HTTP on the loopback: past max_queue a 503 with Retry-After at
once, a request no worker takes within timeout a 504 (and LitServe then drops it unseen), a model worker killed with
kill -9 noticed by /health, its request answered and the worker started again, and the api_key check.

One server (the tiny checkpoint, max_queue=2, timeout=3, an api_key) serves all of them. Its model worker is stopped
with SIGSTOP where a test needs requests to wait: what a worker busy with a long batch looks like from the queue,
without depending on how fast this machine computes one.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli_here
from test_serve import START_TIMEOUT, Server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]
KEY = "test-secret-key"
TIMEOUT = 3  # the server's timeout=, seconds
DROPPED = "was waiting in the queue for too long"  # what LitServe's worker logs for a request it skips


class KeyedServer(Server):
    """A server started with ``api_key=KEY``: even /health asks for it."""

    def ready(self, timeout: float = START_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if call(self, "GET", "/health", timeout=2)[0] == 200:
                return True
            time.sleep(0.3)
        return False


def call(
    server: Server, method: str, path: str, body: bytes | None = None, key: str | None = KEY, timeout: float = 60
) -> tuple[int | None, dict, dict | bytes, float]:
    """(status, headers, JSON answer or raw body, seconds); status None if the connection failed."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["X-API-Key"] = key
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body, headers)
        r = conn.getresponse()
        raw = r.read()
    except OSError:
        return None, {}, b"", time.monotonic() - began
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = raw
    return r.status, {k.lower(): v for k, v in r.getheaders()}, answer, time.monotonic() - began


@pytest.fixture(scope="session")
def faults_server(tiny_run, tmp_path_factory):
    server = KeyedServer(
        tmp_path_factory.mktemp("serve-faults"),
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "max_batch_size=4",
        "batch_timeout=0.05",
        "max_queue=2",
        f"timeout={TIMEOUT}",
        f"api_key={KEY}",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def one_image(tiny_data) -> bytes:
    image = min(tiny_data.rglob("*.*"))
    return json.dumps({"images": [base64.b64encode(image.read_bytes()).decode()]}).encode()


def descendants(pid: int) -> list[int]:
    """``pid`` and its processes, theirs, ...: the children of every thread (LitServe's monitor thread starts
    the model worker again)."""
    found = [int(c) for children in Path(f"/proc/{pid}/task").glob("*/children") for c in children.read_text().split()]
    return [pid] + [d for c in found for d in descendants(c)]


def model_worker(server: Server) -> int:
    """The pid of the server's one model worker (LitServe spawns it; the HTTP processes are forked)."""
    workers = [
        p for p in descendants(server.proc.pid) if b"multiprocessing.spawn" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(workers) == 1, workers
    return workers[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def in_background(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=fn()))
    thread.start()
    return thread, result


def wait_for(condition, seconds: float, what: str) -> float:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return time.monotonic()


def uploaded_slowly(server: Server, body: bytes) -> bytes:
    """The raw answer to a POST whose body comes in two parts half a second apart, as over a slow network.
    A server that answers and closes with the body unread makes the kernel reset the connection: then b""."""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        try:
            s.sendall(head + body[: len(body) // 2])
            time.sleep(0.5)
            s.sendall(body[len(body) // 2 :])
            return b"".join(iter(lambda: s.recv(65536), b""))
        except (ConnectionResetError, BrokenPipeError):
            return b""


def stats(server: Server) -> dict:
    status, _, answer, _ = call(server, "GET", "/stats", timeout=5)
    return answer if status == 200 else {}


def test_past_max_queue_503_at_once_and_a_request_no_worker_takes_in_time_504_and_is_dropped(faults_server, one_image):
    server = faults_server
    assert server.ready(60)
    dropped_before = server.log.read_text().count(DROPPED)
    worker = model_worker(server)
    os.kill(worker, signal.SIGSTOP)  # it takes nothing from the queue now: the two requests below wait
    try:
        waiting = [in_background(lambda: call(server, "POST", "/predict", one_image)) for _ in range(2)]
        wait_for(lambda: stats(server).get("requests_in_flight") == 2, 20, "the two requests never arrived")
        status, headers, answer, seconds = call(server, "POST", "/predict", one_image)
        assert status == 503, answer
        assert seconds < TIMEOUT / 2, seconds  # at once, not after a wait
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1, headers
        assert list(answer) == ["error"] and "max_queue" in answer["error"] and "\n" not in answer["error"]
        padded = one_image + b" " * 2_000_000  # 2 MB: more than the HTTP process reads ahead of the app
        assert uploaded_slowly(server, padded).startswith(b"HTTP/1.1 503 "), "a slow upload was not refused"
        for thread, _ in waiting:
            thread.join(TIMEOUT + 20)
        for _, result in waiting:
            assert "r" in result, f"a request waiting for a stopped worker got no answer in {TIMEOUT + 20} s"
            status, headers, answer, seconds = result["r"]
            assert status == 504, answer
            assert TIMEOUT - 0.2 <= seconds < TIMEOUT + 3, seconds  # answered when the timeout passed
            assert "timeout=3" in answer["error"] and headers["retry-after"].isdigit()
    finally:
        os.kill(worker, signal.SIGCONT)
    # Resumed, the worker finds both requests past their timeout and skips them: neither is computed.
    wait_for(
        lambda: server.log.read_text().count(DROPPED) >= dropped_before + 2,
        20,
        f"LitServe did not drop the timed-out requests: {server.log.read_text()[-2000:]}",
    )
    status, _, answer, _ = call(server, "POST", "/predict", one_image)
    assert status == 200 and answer["predictions"][0]["top"], answer
    assert stats(server)["requests_refused"] >= 1


def test_a_model_worker_killed_mid_request_is_noticed_its_request_answered_and_it_is_started_again(
    faults_server, tiny_data
):
    server = faults_server
    assert server.ready(60)
    worker, restarts = model_worker(server), stats(server)["worker_restarts"]
    image = base64.b64encode(min(tiny_data.rglob("*.*")).read_bytes()).decode()
    heavy = json.dumps({"images": [image] * 64, "explain": True}).encode()  # seconds of Grad-CAM for the worker
    busy_from = cpu_seconds(worker)
    thread, result = in_background(lambda: call(server, "POST", "/predict", heavy, timeout=120))
    wait_for(lambda: cpu_seconds(worker) - busy_from > 0.3 or not thread.is_alive(), 60, "the worker never started")
    assert thread.is_alive(), f"the request was answered before the kill: {result}"
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    noticed = wait_for(
        lambda: call(server, "GET", "/health", timeout=2)[0] != 200,
        10,
        "/health still says ok after the worker was killed",
    )
    thread.join(30)
    assert not thread.is_alive(), "the request the dead worker held was never answered"
    status, headers, answer, _ = result["r"]
    assert status == 503 and "worker died" in answer["error"] and headers["retry-after"].isdigit(), answer
    assert noticed - killed < 5
    assert server.ready(START_TIMEOUT), f"the worker was not started again: {server.log.read_text()[-3000:]}"
    assert server.proc.poll() is None and model_worker(server) != worker
    assert stats(server)["worker_restarts"] == restarts + 1
    status, _, answer, _ = call(server, "POST", "/predict", json.dumps({"images": [image]}).encode())
    assert status == 200 and answer["predictions"][0]["top"], answer


def test_the_api_key_is_asked_for_by_predict_health_and_stats(faults_server, one_image):
    server = faults_server
    for key in (None, "wrong-key"):
        status, _, answer, _ = call(server, "POST", "/predict", one_image, key=key)
        assert status in (401, 403), answer
        assert list(answer) == ["error"] and "\n" not in answer["error"]
        assert call(server, "GET", "/health", key=key)[0] in (401, 403)
        assert call(server, "GET", "/stats", key=key)[0] in (401, 403)
    assert call(server, "GET", "/health")[2] == b"ok"
    assert call(server, "POST", "/predict", one_image)[0] == 200


def test_every_interface_without_an_api_key_warns_and_bad_values_are_one_line(tmp_path, tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The checkpoint is not one: the warning comes, then the error, and the server never listens.
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli_here(
        "serve", f"ckpt={bad}", "host=0.0.0.0", f"port={port}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "bad.ckpt")
    warned = [line for line in (proc.stdout + proc.stderr).splitlines() if "without an api_key" in line]
    assert len(warned) == 1 and warned[0].startswith("host=0.0.0.0 serves on every network interface"), warned
    quiet = run_cli_here(
        "serve",
        f"ckpt={bad}",
        "host=0.0.0.0",
        f"port={port}",
        f"api_key={KEY}",
        f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert_one_line_error(quiet, "bad.ckpt")
    assert "without an api_key" not in quiet.stdout + quiet.stderr
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    for args, word in [
        (("max_queue=-1",), "max_queue"),
        (("max_queue=many",), "max_queue"),
        (("api_key=''",), "api_key"),
        (("api_key=12345",), "api_key"),
    ]:
        assert_one_line_error(
            run_cli_here(
                "serve", f"ckpt={ckpt}", f"port={port}", *args, f"hydra.run.dir={tmp_path / 'run3'}", cwd=tmp_path
            ),
            word,
        )
