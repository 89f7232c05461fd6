"""A real `tensorboard` server on a finished run serves what a user opens: runs, scalars, images, text, HPARAMS.

The server listens on 127.0.0.1 only, on a free port, and is always stopped by the fixture.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_tensorboard import IMAGES, SCALARS

from vggtune.training.tensorboard import HPARAM_METRICS

pytestmark = pytest.mark.slow  # a real TensorBoard server on the tiny run

RUN = "tensorboard"  # the run's name: its event folder, relative to --logdir
# No proxy: a loopback request must never leave the machine, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """A client for the data API of the server at ``base``."""

    def __init__(self, base: str):
        self.base = base

    def get(self, path: str, **query):
        """The JSON answer to GET ``path?query``."""
        return json.loads(self.get_bytes(path, urllib.parse.urlencode(query)))

    def get_bytes(self, path: str, query: str = "") -> bytes:
        """The raw answer to GET ``path?query`` (an image, for instance)."""
        with _OPENER.open(f"{self.base}{path}" + (f"?{query}" if query else ""), timeout=30) as response:
            return response.read()

    def post(self, path: str, body: dict):
        """The JSON answer to POST ``path`` with a JSON ``body``."""
        # The hparams plugin reads a JSON body; without this header the body arrives as form data (400).
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with _OPENER.open(request, timeout=30) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def tensorboard(tiny_run, tmp_path_factory):
    """``tensorboard --logdir <run>`` on a free loopback port, up and listing the run; stopped afterwards."""
    exe = Path(sys.executable).parent / "tensorboard"
    port = _free_port()
    log = tmp_path_factory.mktemp("tensorboard") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "--logdir", str(tiny_run), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = TensorBoard(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if RUN in client.get("/data/runs"):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass  # not listening yet, or still loading
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not list the run within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def summary(tiny_run) -> dict:
    return json.loads((tiny_run / "metrics.json").read_text())


def test_the_run_is_served(tensorboard):
    assert tensorboard.get("/data/runs") == [RUN]


def test_scalars_are_served_with_the_final_values(tensorboard, summary):
    tags = tensorboard.get("/data/plugin/scalars/tags")[RUN]
    assert set(SCALARS) <= set(tags), sorted(set(SCALARS) - set(tags))
    assert "hp_metric" not in tags
    for metric in HPARAM_METRICS:
        points = tensorboard.get("/data/plugin/scalars/scalars", run=RUN, tag=metric)  # [wall, step, value]
        assert points[-1][2] == pytest.approx(summary["metrics"][metric])


def test_images_are_served_one_per_validation(tensorboard):
    assert set(IMAGES) <= set(tensorboard.get("/data/plugin/images/tags")[RUN])
    val_steps = [step for _, step, _ in tensorboard.get("/data/plugin/scalars/scalars", run=RUN, tag="val/acc")]
    for tag in IMAGES:
        entries = tensorboard.get("/data/plugin/images/images", run=RUN, tag=tag, sample=0)
        assert [e["step"] for e in entries] == val_steps, tag
        png = tensorboard.get_bytes("/data/plugin/images/individualImage", entries[-1]["query"])
        assert png.startswith(b"\x89PNG"), png[:16]


def test_text_is_served(tensorboard, summary):
    assert sorted(tensorboard.get("/data/plugin/text/tags")[RUN]) == ["data/classes", "data/images_per_class"]
    (classes,) = tensorboard.get("/data/plugin/text/text", run=RUN, tag="data/classes")
    assert all(f"<td>{name}</td>" in classes["text"] for name in summary["class_names"]), classes["text"]


def test_hparams_table_has_the_config_and_the_final_metrics(tensorboard, tiny_run, summary):
    experiment = tensorboard.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAM_METRICS)
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.arch", "optim.lr", "data.batch_size", "data.image_size", "finetune.name"} <= names
    groups = tensorboard.post(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "startIndex": 0,
            "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        },
    )
    (group,) = groups["sessionGroups"]
    config = yaml.safe_load((tiny_run / ".hydra" / "config.yaml").read_text())
    assert group["hparams"]["model.arch"] == config["model"]["arch"]
    assert group["hparams"]["data.image_size"] == config["data"]["image_size"]
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert values == pytest.approx({m: summary["metrics"][m] for m in HPARAM_METRICS})
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
