"""Experiment trackers (``logger=csv|mlflow|wandb``, several at once), each read back the tracker's own way:
CSV with ``csv``, W&B's offline run with ``wandb leet inspect --json``, MLflow from a real ``mlflow server``
(SQLite, 127.0.0.1, a free port) with ``MlflowClient``; compared with the run's metrics.json and with each other.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import TINY, assert_one_line_error, run_cli_here
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Each test trains one epoch, then resumes the run for a second (TINY trains one): the resume is half the point.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics_json(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _csv_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def _wandb_records(run_folder: Path) -> list[dict]:
    """The records of one offline W&B run, as wandb's own reader prints them."""
    wandb = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wandb_history(records: list[dict], key: str) -> list[float]:
    return [r["history"]["item"][key] for r in records if r["type"] == "history" and key in r["history"]["item"]]


@pytest.fixture
def wandb_env(tmp_path) -> dict:
    """W&B's own folders (artifact staging, cache, settings) inside the test's folder, not in $HOME."""
    return {f"WANDB_{name}_DIR": str(tmp_path / f"wandb-{name.lower()}") for name in ("DATA", "CACHE", "CONFIG")}


@pytest.mark.slow
def test_tensorboard_csv_and_wandb_in_one_run_and_after_a_resume(tmp_path, tiny_data, wandb_env):
    run = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "logger=[tensorboard,csv,wandb]",
        "logger.images_every_n_epochs=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        env=wandb_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _metrics_json(run)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())

    rows = _csv_rows(run)  # CSV: one row per epoch with the validation metrics, test/* of the best checkpoint
    val_acc = _column(rows, "val/acc")
    assert len(val_acc) == summary["epochs"] == 1
    assert val_acc[-1] == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)
    assert _column(rows, "test/acc") == [pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)]
    params = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert params["run_dir"] == str(run) and params["optim.lr"] == config["optim"]["lr"]

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()  # TensorBoard as before: the same per-epoch values, and its own callbacks' text
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx(val_acc, abs=1e-6)
    assert "data/classes" in events.Tags()["tensors"]

    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    records = _wandb_records(folders[0])
    assert _wandb_history(records, "val/acc") == pytest.approx(val_acc, abs=1e-6)
    assert _wandb_history(records, "test/acc") == [pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)]
    wandb_config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    assert wandb_config["run_dir"] == str(run) and wandb_config["optim.lr"] == config["optim"]["lr"]
    assert wandb_config["trainer.max_epochs"] == 1
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert [a["type"] for a in artifacts] == ["model"] and "best" in artifacts[0]["aliases"]
    (entry,) = artifacts[0]["manifest"]["contents"]
    assert entry["path"] == "best.ckpt" and int(entry["size"]) == (run / "checkpoints" / "best.ckpt").stat().st_size
    run_id = next(r["run"]["run_id"] for r in records if r["type"] == "run")

    proc = run_cli_here("train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path, env=wandb_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _csv_rows(run)  # Lightning's CSV writer would have deleted the first epoch's rows
    assert _column(resumed, "val/acc")[:1] == val_acc and len(_column(resumed, "val/acc")) == 2
    assert _column(resumed, "val/acc")[-1] == pytest.approx(_metrics_json(run)["metrics"]["val/acc"], abs=1e-6)
    events.Reload()
    assert len(events.Scalars("val/acc")) == 2
    folders = sorted((run / "wandb").glob("offline-run-*"))  # W&B offline: a second folder, the same run id
    assert len(folders) == 2 and folders[1].name.endswith(run_id)
    assert len(_wandb_history(_wandb_records(folders[1]), "val/acc")) == 1


class MlflowServer:
    """``mlflow server`` on SQLite, on 127.0.0.1 and a free port."""

    def __init__(self, folder: Path):
        self.folder, self.log = folder, folder / "server.log"
        folder.mkdir()
        self.proc: subprocess.Popen | None = None
        self.uri = ""

    def start(self) -> str:
        port = _free_port()
        mlflow = Path(sys.executable).parent / "mlflow"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            start_new_session=True,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
        )
        self.uri = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            try:
                opener.open(f"{self.uri}/health", timeout=2).close()
                return self.uri
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path):
    """A started :class:`MlflowServer`; stopped (bounded) after the test."""
    server = MlflowServer(tmp_path / "server")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_mlflow_run_on_a_real_server_and_its_resume(tmp_path, tiny_data, mlflow_server):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={mlflow_server.uri}",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stderr[-3000:], mlflow_server.log.read_text()[-2000:])
    summary = _metrics_json(run)
    assert not (run / "tensorboard").exists()  # logger=mlflow alone: no TensorBoard files, no figures

    client = MlflowClient(mlflow_server.uri)

    experiment = client.get_experiment_by_name("vggtune")
    (found,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_dir = '{run}'")
    history = [m.value for m in client.get_metric_history(found.info.run_id, "val/acc")]
    assert len(history) == summary["epochs"] == 1
    assert history[-1] == pytest.approx(summary["metrics"]["val/acc"], abs=1e-6)
    test_acc = client.get_metric_history(found.info.run_id, "test/acc")
    assert [m.value for m in test_acc] == [pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)]
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    params = found.data.params
    assert params["run_dir"] == str(run) and float(params["optim.lr"]) == config["optim"]["lr"]
    assert params["trainer.max_epochs"] == "1" and params["model.arch"] == "vgg11"
    (artifact,) = client.list_artifacts(found.info.run_id, "best")
    assert (
        artifact.path == "best/best.ckpt" and artifact.file_size == (run / "checkpoints" / "best.ckpt").stat().st_size
    )
    assert found.info.status == "FINISHED"

    proc = run_cli_here("train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (again,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_dir = '{run}'")
    assert again.info.run_id == found.info.run_id and again.info.status == "FINISHED"  # one run, not a new one
    history = [m.value for m in client.get_metric_history(found.info.run_id, "val/acc")]
    assert len(history) == 2 and history[-1] == pytest.approx(_metrics_json(run)["metrics"]["val/acc"], abs=1e-6)
    assert again.data.params["trainer.max_epochs"] == "1"  # MLflow keeps a param's first value (and says so)
    assert "keeps the first value of each param" in proc.stderr + proc.stdout


def test_a_tracking_server_that_refuses_is_one_line_at_once(tmp_path, tiny_data):
    started = time.monotonic()
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    proc = run_cli_here(
        "train",
        f"data.root={tiny_data}",
        *TINY,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, f"logger.mlflow.tracking_uri={uri}", "no MLflow server answers", "mlflow server")
    assert time.monotonic() - started < 30  # MLflow alone retries for minutes
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_names_the_pip_command(tmp_path, tiny_data, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import mlflow` now raises ImportError, as if not installed
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, f"logger=[tensorboard,{tracker}]", cwd=tmp_path)
    assert_one_line_error(proc, f"logger={tracker}", f'pip install "vggtune[{tracker}]"')


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["logger=foo"], ["unknown logger 'foo'", "csv, mlflow, tensorboard, wandb"]),
        (["logger=[tensorboard,foo]"], ["unknown logger 'foo'", "csv, mlflow, tensorboard, wandb"]),
        (
            ["logger=mlflow", "logger.images_every_n_epochs=0"],
            ["comes with logger=tensorboard", "logger=[tensorboard,mlflow]"],
        ),
        (["logger=wandb", "logger.wandb.mode=foo"], ["logger.wandb.mode=foo", "offline"]),
        (["logger=wandb", "logger.wandb.mode=online"], ["WANDB_API_KEY", "wandb login"]),
        (["logger=mlflow", "logger.log_best_checkpoint=1"], ["logger.log_best_checkpoint", "true or false"]),
    ],
)
def test_bad_logger_choices_are_one_line(tmp_path, tiny_data, overrides, needles, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` key either
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, *overrides, cwd=tmp_path)
    assert_one_line_error(proc, *needles)


def test_logger_null_means_no_tracker_and_lists_compose(tmp_path, tiny_data):
    none = run_cli_here("train", f"data.root={tiny_data}", "logger=null", "--cfg", "job", cwd=tmp_path)
    assert none.returncode == 0 and "logger" not in yaml.safe_load(none.stdout)
    several = run_cli_here(
        "train", f"data.root={tiny_data}", "logger=[tensorboard,csv,mlflow]", "--cfg", "job", cwd=tmp_path
    )
    logger = yaml.safe_load(several.stdout)["logger"]
    assert {"tensorboard", "csv", "mlflow", "images_every_n_epochs"} <= set(logger)
    assert logger["mlflow"]["tracking_uri"] == "sqlite:///${paths.output_dir}/mlflow/mlflow.db"


@pytest.mark.slow
def test_the_offline_weights_test_then_the_mlflow_test_pass_in_one_process(tmp_path):
    """Issue 29's order, in one pytest process: the first runs a download under a dead proxy, which urllib's
    cached opener used to carry into the second's tracking check (connection refused)."""
    tests = Path(__file__).parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            "--basetemp",
            str(tmp_path / "basetemp"),
            "tests/test_bad_input.py::test_imagenet_weights_unavailable_offline_stops_with_the_ways_out",
            "tests/test_trackers.py::test_mlflow_run_on_a_real_server_and_its_resume",
        ],
        cwd=tests.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-4000:]
