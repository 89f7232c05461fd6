"""The trackers' glue in this process, without a server or a network: which loggers a config builds and with
what, how a resume finds its MLflow or W&B run, the CSV rows kept across a resume, the params each tracker
gets, the best checkpoint's upload and closing W&B.

MLflow and W&B themselves are stood in for where they would start a store or a run (an MLflow client, a W&B
run object): the tests check what vggtune asks of them. tests/test_trackers.py runs them for real (slow)."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf, open_dict

from vggtune.config_errors import compose_task
from vggtune.training import trackers
from vggtune.training.tensorboard import flat_config
from vggtune.training.trackers import (
    BestCheckpointArtifact,
    TrackerParams,
    build_loggers,
    finish_trackers,
    has_tensorboard,
    run_label,
    tracker_callbacks,
)


def _cfg(tmp_path: Path, *overrides: str):
    out = tmp_path / "outputs"
    return compose_task(
        "train", [*overrides, f"paths.output_dir={out}", f"paths.run_dir={out / 'train' / 'r1'}"]
    ), out / "train" / "r1"


class _MLflow(MLFlowLogger):
    """An MLFlowLogger whose client is a stand-in (a real one opens its store when made)."""

    def __init__(self, client, run_id: str = "run-1"):
        Logger.__init__(self)
        self._client, self._fixed_run_id, self.logged = client, run_id, []

    @property
    def experiment(self):
        return self._client

    @property
    def run_id(self):
        return self._fixed_run_id

    def log_hyperparams(self, params):
        self.logged.append(dict(params))


class _Client:
    """What vggtune reads and writes of an MLflow client: a run's params and status, artifacts, searches."""

    def __init__(self, params=None, status="FINISHED", experiments=None, runs=()):
        self.params, self.status = dict(params or {}), status
        self.experiments, self.runs = dict(experiments or {}), list(runs)
        self.calls: list[tuple] = []

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(params=self.params), info=SimpleNamespace(status=self.status))

    def update_run(self, run_id, status):
        self.calls.append(("update_run", run_id, status))

    def log_artifact(self, run_id, path, folder):
        self.calls.append(("log_artifact", run_id, path, folder))

    def get_experiment_by_name(self, name):
        return self.experiments.get(name)

    def search_runs(self, ids, **kwargs):
        self.calls.append(("search_runs", ids, kwargs))
        return self.runs


class _Wandb(WandbLogger):
    """A WandbLogger on a stand-in run (the real property starts one)."""

    def __init__(self, run):
        super().__init__(project="p", offline=True)
        self._run = run

    @property
    def experiment(self):
        return self._run


@pytest.fixture
def wandb_stub(monkeypatch) -> ModuleType:
    """``import wandb`` gets this: a run that may be open, finish() and Artifact recorded."""
    module = ModuleType("wandb")
    module.run, module.finished, module.artifacts = None, [], []

    def finish(exit_code=0):
        module.finished.append(exit_code)
        module.run = None

    class Artifact:
        def __init__(self, name, type, metadata):
            self.name, self.type, self.metadata, self.files = name, type, metadata, []
            module.artifacts.append(self)

        def add_file(self, path, name):
            self.files.append((path, name))

    module.finish, module.Artifact = finish, Artifact
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_tensorboard_and_csv_write_into_the_run_folder(tmp_path):
    cfg, run = _cfg(tmp_path, "logger=[tensorboard,csv]")
    loggers = build_loggers(cfg, run)
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, CSVLogger]
    assert Path(loggers[0].log_dir) == run / "tensorboard" and Path(loggers[1].log_dir) == run / "csv"
    assert has_tensorboard(loggers) and not has_tensorboard(loggers[1:])
    assert build_loggers(_cfg(tmp_path, "~logger")[0], run) == []


def test_a_resumed_run_keeps_the_csv_rows_written_before(tmp_path):
    cfg, run = _cfg(tmp_path, "logger=csv")
    (run / "csv").mkdir(parents=True)
    with open(run / "csv" / "metrics.csv", "w", newline="") as f:
        f.write("epoch,step,val/acc\n0,4,0.5\n")
    (logger,) = build_loggers(cfg, run)
    logger.log_metrics({"val/acc": 0.75, "epoch": 1}, step=9)
    logger.save()
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = [(r["epoch"], r["step"], r["val/acc"]) for r in csv.DictReader(f)]
    assert rows == [("0", "4", "0.5"), ("1", "9", "0.75")]  # Lightning alone keeps the second row only


def test_wandb_is_named_after_the_run_folder_and_a_resume_goes_on_in_its_latest_run(tmp_path, wandb_stub):
    cfg, run = _cfg(tmp_path, "logger=[csv,wandb]")
    loggers = build_loggers(cfg, run)
    assert isinstance(loggers[1], WandbLogger)
    init = loggers[1]._wandb_init
    assert (init["name"], init["id"], init["mode"], init["dir"]) == ("train/r1", None, "offline", str(run))
    for name in ["offline-run-20260101_120000-aaa111", "run-20260102_090000-bbb222", "notes", "run-latest"]:
        (run / "wandb" / name).mkdir(parents=True)
    resumed = build_loggers(OmegaConf.merge(cfg, {"ckpt_path": str(run / "checkpoints" / "last.ckpt")}), run)
    assert resumed[1]._wandb_init["id"] == "bbb222"  # the latest by its time stamp, whatever its prefix
    named = OmegaConf.merge(cfg, {"ckpt_path": "last.ckpt"})
    with open_dict(named):
        named.logger.wandb.name, named.logger.wandb.id = "mine", "given"
    init = build_loggers(named, run)[1]._wandb_init
    assert (init["name"], init["id"]) == ("mine", "given")  # what the config names is kept
    assert wandb_stub.finished == []


def test_a_wandb_run_left_open_in_this_process_is_finished_as_failed_first(tmp_path, wandb_stub):
    cfg, run = _cfg(tmp_path, "logger=wandb")
    wandb_stub.run = object()
    trackers._wandb_arguments(cfg, cfg.logger.wandb, run, resuming=False)
    assert wandb_stub.finished == [1]


def test_no_wandb_run_folder_means_a_new_run(tmp_path):
    assert trackers._wandb_run_id(tmp_path) is None
    (tmp_path / "wandb" / "run-bad").mkdir(parents=True)
    assert trackers._wandb_run_id(tmp_path) is None


def test_mlflow_gets_the_run_folder_as_name_and_its_artifacts_beside_a_local_store(tmp_path, monkeypatch):
    cfg, run = _cfg(tmp_path, "logger=mlflow")
    node = cfg.logger.mlflow
    store = tmp_path / "outputs" / "mlflow"
    assert trackers._mlflow_arguments(cfg, node, run, resuming=False) == {
        "run_name": "train/r1",
        "artifact_location": (store / "artifacts").as_uri(),
    }
    asked = []
    monkeypatch.setattr(trackers, "_mlflow_run_of", lambda *a: asked.append(a) or "abc")
    server = OmegaConf.merge(node, {"tracking_uri": "http://host:5000", "run_name": "mine"})
    assert trackers._mlflow_arguments(cfg, server, run, resuming=True) == {"run_id": "abc"}
    assert asked == [("http://host:5000", "vggtune", str(run))]
    placed = OmegaConf.merge(node, {"artifact_location": "s3://bucket/x"})
    assert trackers._mlflow_arguments(cfg, placed, run, resuming=False) == {"run_name": "train/r1"}
    # build_loggers hands these to the logger it makes (a real MLFlowLogger would open the store here)
    made = []
    monkeypatch.setattr(trackers, "instantiate", lambda node, **kw: made.append((node._target_, kw)) or object())
    build_loggers(cfg, run)
    assert made == [
        (
            "lightning.pytorch.loggers.MLFlowLogger",
            {"_convert_": "all", "run_name": "train/r1", "artifact_location": (store / "artifacts").as_uri()},
        )
    ]


def test_a_resume_finds_the_mlflow_run_tagged_with_its_run_folder(monkeypatch, caplog):
    client = _Client(experiments={"vggtune": SimpleNamespace(experiment_id="7")})
    tracking = ModuleType("mlflow.tracking")
    tracking.MlflowClient = lambda uri: client
    monkeypatch.setitem(sys.modules, "mlflow.tracking", tracking)
    assert trackers._mlflow_run_of("sqlite:///x.db", "vggtune", "/runs/r1") is None  # no run tagged: a new one
    (call,) = client.calls
    assert call == (
        "search_runs",
        ["7"],
        {"filter_string": "tags.run_dir = '/runs/r1'", "max_results": 1, "order_by": ["attributes.start_time DESC"]},
    )
    client.runs = [SimpleNamespace(info=SimpleNamespace(run_id="r-9"))]
    with caplog.at_level(logging.INFO, logger="vggtune.training.trackers"):
        assert trackers._mlflow_run_of("sqlite:///x.db", "vggtune", "/runs/r1") == "r-9"
    assert "going on in run r-9" in caplog.text
    client.calls.clear()
    assert trackers._mlflow_run_of("sqlite:///x.db", "vggtune", "/runs/it's") is None  # not quotable: not searched
    assert trackers._mlflow_run_of("sqlite:///x.db", "other", "/runs/r1") is None  # no such experiment
    assert client.calls == []


def test_a_run_name_is_the_path_under_the_output_folder_or_the_folder_s_name(tmp_path):
    cfg, run = _cfg(tmp_path, "~logger")
    assert run_label(cfg, run) == "train/r1"
    assert run_label(cfg, tmp_path / "elsewhere" / "job3") == "job3"


def test_every_tracker_gets_the_same_params_and_the_best_checkpoint_goes_where_files_are_kept(tmp_path):
    cfg, run = _cfg(tmp_path, "logger=[csv,mlflow]")
    mlflow = _MLflow(_Client())
    callbacks = tracker_callbacks(cfg, [CSVLogger(tmp_path), mlflow], run)
    assert [type(c) for c in callbacks] == [TrackerParams, BestCheckpointArtifact]
    assert callbacks[0].params == {**flat_config(cfg), "run_dir": str(run)}
    assert "optim.lr" in callbacks[0].params
    assert [type(c) for c in tracker_callbacks(cfg, [CSVLogger(tmp_path)], run)] == [TrackerParams]
    off = OmegaConf.merge(cfg, {"logger": {"log_best_checkpoint": False}})
    assert [type(c) for c in tracker_callbacks(off, [mlflow], run)] == [TrackerParams]


def test_the_params_are_logged_once_at_the_fit_s_setup(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="csv", version="")
    mlflow = _MLflow(_Client(params={}, status="RUNNING"))
    trainer = SimpleNamespace(loggers=[csv_logger, mlflow])
    params = {"optim.lr": 0.01, "model.arch": "vgg11", "run_dir": "/r"}
    TrackerParams(params).setup(trainer, None, "validate")
    assert mlflow.logged == [] and not (tmp_path / "csv" / "hparams.yaml").exists()
    TrackerParams(params).setup(trainer, None, "fit")
    csv_logger.save()
    assert yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text()) == params
    assert mlflow.logged == [params] and mlflow.experiment.calls == []  # a running run is left as it is


def test_a_resumed_mlflow_run_keeps_its_params_logs_new_ones_and_runs_again(caplog):
    client = _Client(params={"optim.lr": "0.01", "trainer.max_epochs": "1"}, status="FINISHED")
    mlflow = _MLflow(client, run_id="r-3")
    with caplog.at_level(logging.INFO, logger="vggtune.training.trackers"):
        trackers._log_mlflow_params(mlflow, {"optim.lr": 0.01, "trainer.max_epochs": 2, "seed": 5})
    assert mlflow.logged == [{"seed": 5}]  # MLflow refuses to change a param
    assert client.calls == [("update_run", "r-3", "RUNNING")]
    assert "show their value from before the resume: trainer.max_epochs" in caplog.text  # optim.lr did not change


def test_the_monitored_best_checkpoint_is_uploaded_to_mlflow_and_wandb(tmp_path, wandb_stub):
    best = tmp_path / "checkpoints" / "best.ckpt"
    best.parent.mkdir()
    best.write_bytes(b"weights")
    client = _Client()
    run = SimpleNamespace(id="w1", logged=[])
    run.log_artifact = lambda artifact, aliases: run.logged.append((artifact, aliases))
    checkpoint = SimpleNamespace(best_model_path=str(best), monitor="val/acc", best_model_score=torch.tensor(0.75))
    trainer = SimpleNamespace(
        checkpoint_callback=checkpoint, loggers=[CSVLogger(tmp_path), _MLflow(client), _Wandb(run)]
    )
    BestCheckpointArtifact().on_train_end(trainer, None)
    assert client.calls == [("log_artifact", "run-1", str(best), "best")]
    ((artifact, aliases),) = run.logged
    assert aliases == ["best"] and (artifact.name, artifact.type) == ("model-w1", "model")
    assert artifact.metadata == {"monitor": "val/acc", "score": 0.75}
    assert artifact.files == [(str(best), "best.ckpt")]

    client.calls.clear()
    for unmonitored in (
        SimpleNamespace(best_model_path=str(best), monitor=None, best_model_score=None),
        SimpleNamespace(best_model_path=str(tmp_path / "gone.ckpt"), monitor="val/acc", best_model_score=None),
        None,
    ):
        trainer.checkpoint_callback = unmonitored
        BestCheckpointArtifact().on_train_end(trainer, None)
    assert client.calls == [] and len(run.logged) == 1


def test_the_wandb_run_is_finished_after_the_run_and_only_with_wandb(wandb_stub):
    wandb_stub.run = object()
    finish_trackers(SimpleNamespace(loggers=[_MLflow(_Client())]))
    assert wandb_stub.finished == []
    finish_trackers(SimpleNamespace(loggers=[_Wandb(SimpleNamespace(id="w"))]))
    assert wandb_stub.finished == [0] and wandb_stub.run is None
    finish_trackers(SimpleNamespace(loggers=[_Wandb(SimpleNamespace(id="w"))]))  # none open: nothing to finish
    assert wandb_stub.finished == [0]
