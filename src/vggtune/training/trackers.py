"""The ``logger`` config group: TensorBoard, CSV, MLflow and W&B, one or several (``logger=[tensorboard,mlflow]``).

Each chosen option adds a node with a ``_target_`` (a Lightning logger) under ``cfg.logger``; Hydra
merges the options' files, so ``logger=[tensorboard,csv]`` holds both nodes. What Lightning leaves
to its user is here: the same params for every tracker, resuming into the tracker's own run, the
best checkpoint as an artifact, and closing the W&B run. The checks before a run are in
:mod:`vggtune.training.tracker_checks`.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from vggtune.training.tensorboard import flat_config
from vggtune.training.tracker_checks import chosen

log = logging.getLogger(__name__)

_WANDB_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """Every chosen tracker, writing into (or named after) this run folder; a resumed run goes on in its own run."""
    loggers = []
    resuming = bool(cfg.get("ckpt_path"))
    for name, node in chosen(cfg).items():
        extra = {}
        if name == "mlflow":
            extra = _mlflow_arguments(cfg, node, run_dir, resuming)
        elif name == "wandb":
            extra = _wandb_arguments(cfg, node, run_dir, resuming)
        logger = instantiate(node, _convert_="all", **extra)
        if isinstance(logger, CSVLogger):
            _keep_csv_rows(logger)
        loggers.append(logger)
    return loggers


def run_label(cfg: DictConfig, run_dir: Path) -> str:
    """A tracker's run name: the run folder's path under ``paths.output_dir`` (``train/<date>_<time>``) or its name."""
    try:
        return run_dir.resolve().relative_to(Path(str(cfg.paths.output_dir)).resolve()).as_posix()
    except ValueError:
        return run_dir.name


def _mlflow_arguments(cfg: DictConfig, node: DictConfig, run_dir: Path, resuming: bool) -> dict:
    uri = str(node.tracking_uri)
    extra: dict[str, str | None] = {} if node.get("run_name") else {"run_name": run_label(cfg, run_dir)}
    if uri.startswith("sqlite:///") and node.get("artifact_location") is None:
        # MLflow's default is ./mlruns under whatever folder the run starts in: keep them beside the store.
        extra["artifact_location"] = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    if resuming:
        extra["run_id"] = _mlflow_run_of(uri, str(node.experiment_name), str(run_dir))
    return extra


def _wandb_arguments(cfg: DictConfig, node: DictConfig, run_dir: Path, resuming: bool) -> dict:
    import wandb

    if wandb.run is not None:  # left open by a run in this process that failed (a sweep's job): not this run's
        wandb.finish(exit_code=1)
    extra: dict[str, str | None] = {} if node.get("name") else {"name": run_label(cfg, run_dir)}
    if resuming and node.get("id") is None:
        extra["id"] = _wandb_run_id(Path(str(node.save_dir)))
    return extra


def _mlflow_run_of(uri: str, experiment: str, run_dir: str) -> str | None:
    """The MLflow run tagged with this run folder (the latest, if several), so that a resume goes on in it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or "'" in run_dir:  # no quoting of ' in MLflow's filter strings: start a new run
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.run_dir = '{run_dir}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if runs:
        log.info("MLflow: going on in run %s (the one tagged with this run folder)", runs[0].info.run_id)
    return runs[0].info.run_id if runs else None


def _wandb_run_id(save_dir: Path) -> str | None:
    """The id of this run folder's latest W&B run (wandb/offline-run-<time>-<id>): a resume logs under the same id."""
    names = sorted(p.name for p in (save_dir / "wandb").glob("*run-*") if _WANDB_RUN_FOLDER.match(p.name))
    found = _WANDB_RUN_FOLDER.match(names[-1]) if names else None
    return found["id"] if found else None


def _keep_csv_rows(logger: CSVLogger) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it starts (fabric's csv_logs
    ``_check_log_dir_exists``, Lightning 2.6): a resumed run puts the earlier rows back, ahead of its own."""
    path = Path(logger.log_dir) / "metrics.csv"
    # rank_zero_only.rank: set by Lightning at import, not declared on the function (lightning_utilities)
    if not rank_zero_only.rank == 0 or not path.is_file():  # type: ignore[attr-defined]
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, keys = list(reader), list(reader.fieldnames or [])
    with warnings.catch_warnings():  # its "previous log files ... will be deleted" is not true here
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # made now: it removes the file, and writes it again on the next save
    writer.metrics_keys, writer.metrics = keys, rows + writer.metrics
    writer.save()


def tracker_callbacks(cfg: DictConfig, loggers: list[Logger], run_dir: Path) -> list[pl.Callback]:
    """The params every tracker gets, and the best checkpoint as an artifact where the tracker keeps files."""
    upload = bool((cfg.get("logger") or {}).get("log_best_checkpoint", False))
    callbacks: list[pl.Callback] = [TrackerParams({**flat_config(cfg), "run_dir": str(run_dir)})]
    if upload and any(isinstance(lg, (MLFlowLogger, WandbLogger)) for lg in loggers):
        callbacks.append(BestCheckpointArtifact())
    return callbacks


def has_tensorboard(loggers: list[Logger]) -> bool:
    """Whether TensorBoard is one of the trackers (its figures, text and HPARAMS callbacks need it)."""
    return any(isinstance(lg, TensorBoardLogger) for lg in loggers)


class TrackerParams(pl.Callback):
    """Logs the run's config (the keys of TensorBoard's HPARAMS table, and ``run_dir``) to every tracker.

    The module is saved with ``save_hyperparameters(logger=False)``: its nested hparams would land
    beside these in a second spelling (``optim/lr`` and ``optim.lr``).
    """

    def __init__(self, params: dict):
        self.params = params

    @rank_zero_only
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # In setup: before Lightning's first logger.save(), which writes TensorBoard's hparams.yaml once.
        if stage != "fit":
            return
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                _log_mlflow_params(logger, self.params)
            else:
                logger.log_hyperparams(self.params)


def _log_mlflow_params(logger: MLFlowLogger, params: dict) -> None:
    """MLflow refuses to change a logged param (INVALID_PARAMETER_VALUE): a resumed run keeps its first
    values and logs only new keys. A run that finished is marked running again while it goes on."""
    client, run = logger.experiment, logger.experiment.get_run(logger.run_id)
    have = run.data.params
    changed = sorted(k for k, v in params.items() if k in have and have[k] != str(v)[:250])
    if changed:
        log.info(
            "MLflow run %s keeps the first value of each param, so these show their value from before the resume: %s",
            logger.run_id,
            ", ".join(changed),
        )
    if run.info.status != "RUNNING":
        client.update_run(logger.run_id, status="RUNNING")
    logger.log_hyperparams({k: v for k, v in params.items() if k not in have})


class BestCheckpointArtifact(pl.Callback):
    """When training ends, uploads ``checkpoints/best.ckpt`` to MLflow (artifact ``best/best.ckpt``) and W&B
    (a ``model`` artifact, alias ``best``). Only the monitored best: last.ckpt carries the optimizer's state."""

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = trainer.checkpoint_callback
        path = getattr(best, "best_model_path", "") if getattr(best, "monitor", None) else ""
        if not path or not Path(path).is_file():
            return
        score = getattr(best, "best_model_score", None)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, path, "best")
            elif isinstance(logger, WandbLogger):
                import wandb

                run = logger.experiment
                score = float(score) if score is not None else None
                artifact = wandb.Artifact(
                    f"model-{run.id}",
                    type="model",
                    metadata={"monitor": getattr(best, "monitor", None), "score": score},
                )
                artifact.add_file(path, name=Path(path).name)
                run.log_artifact(artifact, aliases=["best"])


@rank_zero_only
def finish_trackers(trainer: pl.Trainer) -> None:
    """Ends the W&B run once the fit and the test have logged: Lightning leaves it open (lightning #5212;
    PR #18659, to finish it in ``finalize``, was closed unmerged), and the next run in this process
    (the demo's from-scratch run, a sweep's next job) would log into it."""
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
