"""`vggtune serve` over real HTTP on the loopback: the same probabilities as predict, every way of sending an
image, bad requests answered with a 4xx while the server keeps answering, an ONNX file served without the
checkpoint, SIGTERM finishing the request in flight, and the web page in a real headless Chromium.

Two servers (a checkpoint with batching, an exported ONNX file) start once, side by side.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_here, vggtune_command
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]  # one worker starts the servers once
START_TIMEOUT = 240  # two servers each import torch twice (main process, model worker): slow on a busy machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``vggtune serve`` subprocess on a free loopback port."""

    def __init__(self, cwd: Path, *args: str):
        self.cwd, self.args = cwd, args
        self.start()

    def start(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.cwd / f"serve-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    *vggtune_command(),
                    "serve",
                    *self.args,
                    f"port={self.port}",
                    "device=cpu",
                    f"hydra.run.dir={self.cwd / f'run-{self.port}'}",
                ],
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self, timeout: float = START_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=2).status == 200:
                    return True
            except OSError:
                time.sleep(0.5)
        return False

    def wait_ready(self) -> None:
        # In full suites on the busy 2-core machine a server's model worker twice never became ready (never
        # alone): the failure carries what each of its processes was doing, for the next time.
        assert self.ready(), (
            f"server not ready in {START_TIMEOUT} s: {self.log.read_text()[-3000:]}\n{_diagnose(self.proc.pid)}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [pid] + [d for c in found for d in _descendants(c)]


def _diagnose(pid: int) -> str:
    """Each process of the server: its command, state and signal masks, its Python stacks (py-spy), and the
    environment the server got beyond the one this test session started with."""
    lines = []
    for p in _descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            status = {
                k: v.strip()
                for k, _, v in (ln.partition(":") for ln in Path(f"/proc/{p}/status").read_text().splitlines())
            }
        except OSError:
            continue
        lines.append(f"pid {p} {status.get('State')} SigBlk={status.get('SigBlk')} SigIgn={status.get('SigIgn')} {cmd}")
        if shutil.which("py-spy"):
            dump = subprocess.run(["py-spy", "dump", "--pid", str(p)], capture_output=True, text=True, timeout=30)
            lines.append(dump.stdout[-2500:] + dump.stderr[-500:])
    extra = {k: v for k, v in os.environ.items() if SESSION_ENV.get(k) != v}
    return "\n".join(lines + [f"environment beyond the session's: {extra}"])


SESSION_ENV = dict(os.environ)


def post(url: str, body: bytes, content_type: str | None, timeout: float = 60) -> tuple[int, dict]:
    """``POST url`` -> (status, JSON answer), whatever the status."""
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def multipart(data: bytes, filename: str = "image.png", **fields: str) -> tuple[bytes, str]:
    boundary = "vggtuneboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header says ``width`` x ``height``: a decompression bomb's shape, without the memory."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


@pytest.fixture(scope="session")  # not module: xdist may run other tests between these, ending a module scope
def servers(tiny_run, tmp_path_factory):
    """(checkpoint server, ONNX server, the exported file): started together, stopped after the session."""
    work = tmp_path_factory.mktemp("serve")
    onnx = work / "model.onnx"
    proc = run_cli_here(
        "export",
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "format=onnx",
        f"output={onnx}",
        f"hydra.run.dir={work / 'export'}",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt_server = Server(
        work,
        f"ckpt={tiny_run / 'checkpoints' / 'best.ckpt'}",
        "max_batch_size=8",
        "batch_timeout=0.25",
        "max_request_mb=1",
    )
    onnx_server = Server(work, f"model={onnx}", "max_batch_size=4", "batch_timeout=2")
    try:
        ckpt_server.wait_ready()
        onnx_server.wait_ready()
        yield ckpt_server, onnx_server, onnx
    finally:
        ckpt_server.stop()
        onnx_server.stop()


@pytest.fixture(scope="session")
def images(tiny_data) -> list[Path]:
    return sorted(tiny_data.rglob("*.*"))[::4]  # a few of each class


def _probs(answer: dict, names: list[str]) -> list[list[float]]:
    return [[p["probabilities"][n] for n in names] for p in answer["predictions"]]


def test_serve_gives_predicts_probabilities_for_the_same_files(servers, tiny_run, images):
    from vggtune.use.inference import load_model, predict_probabilities

    model = load_model(tiny_run / "checkpoints" / "best.ckpt", "cpu")
    expected = predict_probabilities(model, images).probs
    body = json.dumps({"images": [base64.b64encode(p.read_bytes()).decode() for p in images]}).encode()
    status, answer = post(servers[0].url + "/predict", body, "application/json")
    assert status == 200, answer
    assert answer["version"] and answer["model"].endswith("best.ckpt")
    np.testing.assert_allclose(_probs(answer, model.class_names), expected.numpy(), atol=1e-5)
    top = [p["top"][0]["class"] for p in answer["predictions"]]
    assert top == [model.class_names[i] for i in expected.argmax(dim=1).tolist()]


def test_an_upload_a_raw_body_and_a_data_url_give_the_same_answer(servers, images):
    url, data = servers[0].url + "/predict", images[0].read_bytes()
    answers = [
        post(url, *multipart(data, top_k="2")),
        post(url + "?top_k=2", data, "image/png"),
        post(
            url,
            json.dumps({"image": "data:image/png;base64," + base64.b64encode(data).decode(), "top_k": 2}).encode(),
            "application/json",
        ),
    ]
    assert [s for s, _ in answers] == [200, 200, 200], answers
    tops = [a["predictions"][0]["top"] for _, a in answers]
    assert len(tops[0]) == 2 and tops[0] == tops[1] == tops[2]
    assert sum(tops[0][i]["probability"] for i in range(2)) <= 1 + 1e-6


def test_explain_returns_a_grad_cam_overlay_at_the_images_own_size(servers, images):
    status, answer = post(servers[0].url + "/predict", *multipart(images[0].read_bytes(), explain="true"))
    assert status == 200, answer
    p = answer["predictions"][0]
    overlay = Image.open(io.BytesIO(base64.b64decode(p["heatmap_png"])))
    assert overlay.size == Image.open(images[0]).size
    assert p["heatmap_class"] == p["top"][0]["class"]


def test_info_health_and_the_page(servers, tiny_run):
    from vggtune.model.checkpoint import model_from_checkpoint

    names = list(model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt").class_names)
    info = json.load(urllib.request.urlopen(servers[0].url + "/info"))["model"]
    assert info["classes"] == names and info["backend"] == "torch" and info["image_size"] == 32
    assert info["preprocessing"]["center_crop"] == 32
    onnx_info = json.load(urllib.request.urlopen(servers[1].url + "/info"))["model"]
    assert onnx_info["classes"] == names and onnx_info["backend"] == "onnx" and onnx_info["explain"] is False
    assert urllib.request.urlopen(servers[0].url + "/health").read() == b"ok"
    assert b"<title>vggtune serve</title>" in urllib.request.urlopen(servers[0].url + "/").read()


BAD = {  # name -> (body, content type, status, a word of the error)
    "not an image": (b"hello, not a picture", "image/png", 415, "not an image"),
    "truncated": (None, "image/png", 400, "damaged"),
    "10,000 x 10,000 pixels": (png_claiming(10_000, 10_000), "image/png", 413, "10000x10000"),
    "decompression bomb": (png_claiming(100_000, 100_000), "image/png", 413, "pixels"),
    "over the body limit": (b"\0" * 1_200_000, "image/png", 413, "limit of 1 MB"),
    "wrong content type": (b"x", "text/plain", 415, "content type"),
    "malformed JSON": (b'{"images": [', "application/json", 400, "malformed JSON"),
    "no image in the JSON": (b'{"top_k": 2}', "application/json", 400, "no image"),
    "bad base64": (b'{"images": ["***"]}', "application/json", 400, "base64"),
    "bad top_k": (b'{"images": ["aGk="], "top_k": 0}', "application/json", 400, "top_k"),
    "upload without a file": (None, "multipart", 400, "field 'file'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_a_4xx_with_one_line_and_the_next_good_one_is_answered(servers, images, case):
    body, kind, status, word = BAD[case]
    good = images[0].read_bytes()
    if case == "truncated":
        body = good[: len(good) // 2]
    if kind == "multipart":
        body, kind = multipart(b"", top_k="2")
        body = body.replace(b'name="file"', b'name="other"')
    if case == "over the body limit":  # headers only: the server answers 413 before reading a body, and a
        got, answer = _declared_body(servers[0], len(body), kind)  # client still sending it would break its pipe
    else:
        got, answer = post(servers[0].url + "/predict", body, kind)
    assert got == status, answer
    assert list(answer) == ["error"] and word in answer["error"] and "\n" not in answer["error"]
    assert post(servers[0].url + "/predict", good, "image/png")[0] == 200


def _declared_body(server: Server, length: int, kind: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", kind)
    conn.putheader("Content-Length", str(length))
    conn.endheaders()
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def test_a_bad_request_batched_with_good_ones_fails_alone(servers, images):
    """batch_timeout=0.25: requests sent together are decoded and predicted as one batch."""
    url, results = servers[0].url + "/predict", {}
    sends = {
        "good1": (images[0].read_bytes(), "image/png"),
        "bad": (b"not an image", "image/png"),
        "good2": (images[1].read_bytes(), "image/png"),
    }
    threads = [
        threading.Thread(target=lambda k=k, v=v: results.__setitem__(k, post(url, *v))) for k, v in sends.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["good1"][0] == results["good2"][0] == 200 and results["bad"][0] == 415, results


def test_the_onnx_file_is_served_with_the_checkpoints_probabilities(servers, images, tiny_run):
    from vggtune.model.checkpoint import model_from_checkpoint

    names = list(model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt").class_names)
    body = json.dumps({"images": [base64.b64encode(p.read_bytes()).decode() for p in images]}).encode()
    (s1, a1), (s2, a2) = (post(srv.url + "/predict", body, "application/json") for srv in servers[:2])
    assert s1 == s2 == 200, (a1, a2)
    np.testing.assert_allclose(_probs(a2, names), _probs(a1, names), atol=1e-4)
    status, answer = post(servers[1].url + "/predict", *multipart(images[0].read_bytes(), explain="true"))
    assert status == 400 and "checkpoint" in answer["error"]


def _stats(server: Server) -> dict:
    try:
        return json.load(urllib.request.urlopen(server.url + "/stats", timeout=5))
    except OSError:
        return {}


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(servers, images):
    """The ONNX server waits batch_timeout=2 s for a batch to fill: a lone request is in flight that long. The
    server is started again afterwards: in a shuffled order (pytest-randomly) other tests come after this one."""
    server = servers[1]
    result = {}
    sender = threading.Thread(
        target=lambda: result.update(r=post(server.url + "/predict", images[0].read_bytes(), "image/png"))
    )
    sender.start()
    deadline = time.monotonic() + 30
    while _stats(server).get("requests_in_flight", 0) < 1:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    while not _stats(server).get("draining"):  # the signal reached the server
        assert time.monotonic() < deadline, "SIGTERM did not start the drain"
        time.sleep(0.02)
    late = None
    try:
        late = post(server.url + "/predict", images[0].read_bytes(), "image/png", timeout=10)
    except OSError:  # already closed: refused outright, which is as good
        pass
    sender.join(30)
    assert result["r"][0] == 200 and result["r"][1]["predictions"][0]["top"], result
    assert late is None or late[0] == 503, late
    assert server.proc.wait(timeout=60) == 0, server.log.read_text()[-3000:]
    server.start()  # the tests after this one, in whatever order they run, find the ONNX server up again
    server.wait_ready()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (Debian) to run the page test")
def test_the_page_shows_the_top_classes_and_the_heatmap_in_a_real_browser(servers, images, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    status, answer = post(servers[0].url + "/predict?top_k=3", images[0].read_bytes(), "image/png")
    expected = [t["class"] for t in answer["predictions"][0]["top"]]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(servers[0].url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
        page.check("#explain")
        page.set_input_files("#file", str(images[0]))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        shown = page.eval_on_selector_all("#bars .bar", "rows => rows.map(r => r.dataset.class)")
        heat_width = page.eval_on_selector("#heatmap", "img => img.naturalWidth")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert status == 200 and shown == expected
    assert heat_width == Image.open(images[0]).size[0]
    assert Image.open(tmp_path / "page.png").size == (900, 700)
