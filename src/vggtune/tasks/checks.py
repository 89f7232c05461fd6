"""Values of the train and lr_find configs that would otherwise fail minutes into a run, or not at all.

Run by the command line before a run folder is made, and again by the task itself (a sweep's jobs
and the Python API skip the command line).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vggtune.core.errors import UserError
from vggtune.model.resume import epochs_done
from vggtune.schema.check import TASKS, check_config, check_value
from vggtune.schema.tasks import MULTILABEL_MONITORS
from vggtune.training.tracker_checks import check_loggers

log = logging.getLogger(__name__)


def check_train(cfg: DictConfig) -> None:
    """Values of ``vggtune train`` (and ``lr_find``) that would otherwise fail minutes later, or not at all: each
    key against its declaration (vggtune.schema), then the trackers and the checkpoint to resume from."""
    check_config(cfg, str(cfg.get("task_name", "train")) if cfg.get("task_name") in TASKS else "train")
    check_loggers(cfg)
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(Path(str(cfg.ckpt_path)).expanduser(), str(cfg.model.arch))


def complete_run(cfg: DictConfig) -> str | None:
    """With ``ckpt_path`` of a run that has trained ``trainer.max_epochs`` epochs or more: the line that
    says so and how to train on (Lightning would restore it, train nothing and validate nothing)."""
    if not cfg.get("ckpt_path"):
        return None
    path = Path(str(cfg.ckpt_path)).expanduser()
    done, epochs = epochs_done(_read_checkpoint(path, "ckpt_path")), int(cfg.trainer.max_epochs)
    if done < epochs:
        return None
    more = f"trainer.max_epochs={max(done + 1, 2 * done)}"
    if cfg.get("resume"):  # resume= brings back the run's own overrides: the command is complete as it is
        where, train_on = f"{cfg.resume}", f"vggtune train resume={cfg.resume} {more}"
    else:
        where, train_on = f"{path}", f"the same command with {more}"
    stands = f"complete at epoch {done} of {epochs}" if done == epochs else f"at epoch {done}, past {epochs}"
    return (
        f"The run in {where} is {stands} (trainer.max_epochs={epochs}): nothing to train. To train on, "
        f"raise trainer.max_epochs: {train_on}"
    )


def check_threshold(value) -> float | None:
    """``threshold``: ``auto`` (None: chosen per label on the validation images) or a probability in (0, 1)."""
    if value is None or check_value("threshold", value) == "auto":
        return None
    return float(value)


def check_against_data(cfg: DictConfig, classes: list[str], multilabel: bool = False) -> None:
    """What needs the data's classes: the monitored metric, and a checkpoint to resume from."""
    if multilabel:
        _multilabel_monitor(cfg)
        soft = [
            f"{k}={v}"
            for k, v in (
                ("model.label_smoothing", cfg.model.get("label_smoothing", 0.0)),
                ("data.mixup", cfg.data.get("mixup", 0.0)),
                ("data.cutmix", cfg.data.get("cutmix", 0.0)),
            )
            if v
        ]
        if soft:
            raise UserError(
                f"{', '.join(soft)}: label smoothing, MixUp and CutMix need one class per image, and "
                "this data has several labels per image (data.label_delim); set them to 0"
            )
    elif cfg.monitor in ("val/map", "val/f1_tuned"):
        raise UserError(
            f"monitor={cfg.monitor} is a multi-label metric (data.label_delim), and this data has one "
            "class per image: use monitor=val/acc"
        )
    from vggtune.model.module import TOP5_MIN_CLASSES  # here: the command line's checks run before Lightning loads

    if cfg.monitor == "val/acc_top5" and len(classes) < TOP5_MIN_CLASSES:
        raise UserError(
            f"monitor=val/acc_top5 needs at least {TOP5_MIN_CLASSES} classes (with fewer it is always 1), and {cfg.data.root} has {len(classes)}: "
            "use monitor=val/acc"
        )
    if cfg.ckpt_path:
        trained = (_read_checkpoint(cfg.ckpt_path, "ckpt_path").get("hyper_parameters") or {}).get("class_names")
        if trained is not None and list(trained) != list(classes):
            raise UserError(
                f"{cfg.ckpt_path} was trained on the classes {', '.join(trained)}, but "
                f"{cfg.data.root} has {', '.join(classes)}: resume with the run's own data "
                "(leave data.root out), or start a new run"
            )


def _multilabel_monitor(cfg: DictConfig) -> None:
    """Several labels per image: monitor val/map unless the command line chose a metric."""
    chosen = HydraConfig.initialized() and any(
        o.lstrip("+~").startswith("monitor=") for o in HydraConfig.get().overrides.task
    )
    if cfg.monitor == "val/acc" and not chosen:
        log.info(
            "Several labels per image: the best checkpoint is the one with the highest val/map (macro mean "
            "average precision); pass monitor=... to choose another metric"
        )
        with open_dict(cfg):
            cfg.monitor, cfg.monitor_mode = "val/map", "max"
    elif cfg.monitor not in MULTILABEL_MONITORS:
        raise UserError(
            f"monitor={cfg.monitor} is not logged with several labels per image: choose one of "
            f"{', '.join(MULTILABEL_MONITORS)}"
        )


def check_lr_find(cfg: DictConfig) -> None:
    """The range test's own keys (before a run folder is made): each as declared, and min_lr below max_lr."""
    check_config(cfg, "lr_find")
    if not cfg.lr_find.min_lr < cfg.lr_find.max_lr:
        raise UserError(
            f"lr_find.min_lr must be above 0 and below lr_find.max_lr, got {cfg.lr_find.min_lr} and {cfg.lr_find.max_lr}"
        )


def check_resume_checkpoint(path: Path, arch: str) -> None:
    """``ckpt_path`` must be a full training state written by ``vggtune train`` for the same model."""
    fix = "pass ckpt_path=<run folder>/checkpoints/last.ckpt, or resume=<run folder>"
    ckpt = _read_checkpoint(path, "ckpt_path", fix)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise UserError(
            f"{path} holds model weights only (best.ckpt is saved that way), not a training state to "
            f"resume: pass ckpt_path={path.parent / 'last.ckpt'}, or resume=<run folder>"
        )
    trained = (ckpt.get("hyper_parameters") or {}).get("arch")
    if trained != arch:
        raise UserError(
            f"{path} was trained as {trained}, but this run builds model={arch}: leave model= out to "
            f"continue that run (a different model needs a new run); nothing was changed"
        )


def _read_checkpoint(path, key: str, fix: str | None = None) -> dict:
    from vggtune.model.weights import read_checkpoint  # torch: only for a run given a checkpoint

    return read_checkpoint(path, key) if fix is None else read_checkpoint(path, key, fix)
