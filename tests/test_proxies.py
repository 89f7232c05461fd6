"""Requests vggtune makes read the proxy settings as they are when they are made (issue 29), and a command run
in the test process leaves no process-wide state behind for the tests after it."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import TINY, ProcessState, run_cli_here

from vggtune.core.errors import UserError
from vggtune.core.proxies import proxies_as_now
from vggtune.training.tracker_checks import check_tracking_uri

PROXY_VARS = [f"{name}_PROXY" for name in ("HTTP", "HTTPS", "NO", "ALL")]
PROXY_VARS += [name.lower() for name in PROXY_VARS]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200; a proxy is sent the absolute URL, a server only the path."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def listener() -> Iterator:
    """An HTTP server on 127.0.0.1 and a free port that records the request lines it gets (its ``seen``)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_proxies(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    saved = urllib.request._opener
    urllib.request.install_opener(None)
    yield monkeypatch
    urllib.request.install_opener(saved)


def test_a_tracking_uri_behind_a_proxy_is_reached_through_it(no_proxies, listener):
    no_proxies.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.server_port}")
    check_tracking_uri("http://mlflow.internal.example:5000")  # only the proxy knows this host
    assert listener.seen == ["http://mlflow.internal.example:5000/health"]


def test_no_proxy_hosts_are_reached_directly(no_proxies, listener):
    no_proxies.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")  # a proxy nobody runs
    no_proxies.setenv("NO_PROXY", "127.0.0.1")
    check_tracking_uri(f"http://127.0.0.1:{listener.server_port}")
    assert listener.seen == ["/health"]


def test_the_check_follows_the_environment_after_urlopen_cached_a_dead_proxy(no_proxies, listener):
    """The failure of issue 29, in one process: torch.hub's download (urlopen) ran under a proxy that is gone
    now, and urlopen keeps the opener it built then; the tracking check must not be sent there."""
    no_proxies.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{listener.server_port}/weights", timeout=5)
    no_proxies.delenv("HTTP_PROXY")
    check_tracking_uri(f"http://127.0.0.1:{listener.server_port}")
    assert listener.seen == ["/health"]
    no_proxies.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")  # and the other way round
    with pytest.raises(UserError, match="no MLflow server answers"):
        check_tracking_uri(f"http://127.0.0.1:{listener.server_port}")


def test_a_download_uses_the_proxies_of_the_moment_and_caches_no_opener(no_proxies, listener):
    url = f"http://127.0.0.1:{listener.server_port}/weights.pth"
    no_proxies.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    with proxies_as_now(), pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    assert urllib.request._opener is None
    no_proxies.delenv("HTTP_PROXY")
    with proxies_as_now():
        assert urllib.request.urlopen(url, timeout=5).read() == b"OK"
    assert listener.seen == ["/weights.pth"] and urllib.request._opener is None
    mine = urllib.request.build_opener()  # an opener the user installed on purpose is kept, and used
    urllib.request.install_opener(mine)
    with proxies_as_now():
        assert urllib.request._opener is mine


@pytest.mark.slow
def test_a_command_run_in_the_test_process_leaves_its_state_as_it_was(tmp_path, tiny_data):
    """run_cli_here puts back what a run changes process-wide (a failed ImageNet download under a dead proxy
    is the one that broke the MLflow test); a refused run and a finished one both."""
    before = ProcessState().snapshot()
    dead = f"http://127.0.0.1:{_closed_port()}"
    env = {"TORCH_HOME": str(tmp_path / "torch"), "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "NO_PROXY": ""}
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "model.weights=imagenet",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2 and "could not get the ImageNet weights" in proc.stderr
    after = ProcessState().snapshot()
    after["loggers"] = {name: state for name, state in after["loggers"].items() if name in before["loggers"]}
    assert after == before
