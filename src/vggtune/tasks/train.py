"""``vggtune train``: fine-tune a VGG on a folder of class folders, top to bottom in :func:`train`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import cast

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from vggtune.core.errors import UserError
from vggtune.data.datamodule import ClassFolderDataModule
from vggtune.data.feature_cache import weights_identity
from vggtune.model.checkpoint import AtomicCheckpointIO
from vggtune.model.finetune import FROM_SCRATCH, FreezeSchedule, Schedule
from vggtune.model.module import VGGClassifier
from vggtune.model.weights import read_checkpoint
from vggtune.tasks import demo
from vggtune.tasks.checks import check_against_data, check_threshold, check_train, complete_run
from vggtune.tasks.runs import commit_run_config, report_run, write_json, write_skipped
from vggtune.training.callbacks import EpochSeed, ReplicaCheck
from vggtune.training.faults import INTERRUPTED_CKPT, SaveOnInterrupt, StopOnNonFiniteLoss
from vggtune.training.messages import tidy_lightning_messages
from vggtune.training.tensorboard import EpochSpeed, tensorboard_callbacks
from vggtune.training.trackers import build_loggers, finish_trackers, has_tensorboard, tracker_callbacks

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as ``cfg`` says; write checkpoints, logs and ``metrics.json`` to the run folder.

    Returns the ``metrics.json`` content, so sweeps and tests can call this directly.
    """
    check_train(cfg)  # again: sweep jobs get here without the command line's checks
    if complete := complete_run(cfg):
        return _complete_run(cfg, complete)
    resolve_recipe(cfg)
    run_dir = Path(cfg.paths.run_dir)
    schedule = Schedule(**cfg.finetune)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule: ClassFolderDataModule = instantiate(cfg.data, cache_images=_cache_images(cfg))
    split = datamodule.split
    check_against_data(cfg, split.classes, split.multilabel)
    _warn_schedule(schedule, cfg.trainer.max_epochs)
    module = build_module(
        cfg, split.classes, datamodule.preprocessing.to_dict(), datamodule.loss_weights(), label_delim=split.label_delim
    )
    trainer = build_trainer(cfg)
    if datamodule.cache_features:
        _use_feature_cache(cfg, datamodule, module, schedule)
    elif datamodule.cache_images:
        datamodule.use_image_cache()
    _prepare_run_folder(split, run_dir)  # only now, when every input has been checked
    if trainer.is_global_zero:
        commit_run_config(run_dir)  # a resumed run goes on with the overrides it was given now

    _fit(trainer, module, datamodule, cfg.ckpt_path)
    if trainer.is_global_zero:
        _drop_stale_interrupted(run_dir)
    summary = _summarize_fit(trainer, cfg, split, run_dir)
    best = summary["best_checkpoint"]
    if trainer.is_global_zero and best:  # what eval/predict will use: the best checkpoint's, not the last epoch's
        ours = read_checkpoint(best, "best checkpoint").get("vggtune") or {}
        summary["best"] = {k: ours[k] for k in ("calibration", "thresholds") if ours.get(k) is not None}
    if cfg.test_after_fit and "test" in split.subsets and best:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        summary["metrics"].update({k: float(v) for k, v in (results[0] if results else {}).items()})
    finish_trackers(trainer)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", summary)
        if not demo.is_baseline(cfg):  # the demo's run from random init: its numbers are in the demo's line
            report_run(run_dir, summary)
    return summary


def _complete_run(cfg: DictConfig, message: str) -> dict:
    """A run that has trained all its epochs: say so, and return its ``metrics.json`` (nothing is written)."""
    log.info(message)
    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    written = ckpt.parent.parent / "metrics.json"  # <run folder>/checkpoints/last.ckpt
    if written.is_file():
        return json.loads(written.read_text(encoding="utf-8"))
    return {"metrics": {}, "monitor": cfg.monitor, "last_checkpoint": str(ckpt)}


def resolve_recipe(cfg: DictConfig) -> None:
    """The defaults that follow from other keys, for every task that builds the training run."""
    _from_scratch_defaults(cfg)
    _new_head_trains(cfg)
    if cfg.data.get("stream") and OmegaConf.is_missing(cfg.data, "root"):  # the stream names the classes and split
        with open_dict(cfg):
            cfg.data.root = None


def _new_head_trains(cfg: DictConfig) -> None:
    """``model.head=pooled`` has no pretrained layers above the conv blocks: its "fc" group always trains."""
    if cfg.model.get("head", "vgg") == "pooled" and not cfg.finetune.train_fc:
        log.info("model.head=pooled: its hidden layer is new, so it trains with the head (finetune.train_fc=true)")
        with open_dict(cfg):
            cfg.finetune.train_fc = True


def _from_scratch_defaults(cfg: DictConfig) -> None:
    """With ``model.weights=none`` and no ``finetune`` choice of the user's: train every layer at one LR.

    The fine-tune default (freeze_unfreeze, lower layers at ``lr_decay ** depth``) would freeze
    random layers in the first epoch and give block1 1/64 of the LR. A ``finetune`` override on
    the command line, or an experiment (which sets its own), is kept as given.
    """
    if str(cfg.model.weights).lower() != "none" or _finetune_chosen(cfg):
        return
    with open_dict(cfg):
        cfg.finetune.update(FROM_SCRATCH)
    log.info(
        "model.weights=none: nothing is pretrained, so every layer trains from the first step at one "
        "learning rate (finetune=full finetune.lr_decay=1); choose finetune=... to change that"
    )


def _finetune_chosen(cfg: DictConfig) -> bool:
    """Whether the command line, or the experiment it names, set anything in the finetune group."""
    if not HydraConfig.initialized():
        return True  # called directly with a config: take it as given
    hydra = HydraConfig.get()
    overrides = [o.lstrip("+~") for o in hydra.overrides.task]
    return any(o.split("=", 1)[0].split(".", 1)[0] == "finetune" for o in overrides) or hydra.runtime.choices.get(
        "experiment"
    ) not in (None, "null")  # an experiment is deliberate


def _summarize_fit(trainer: pl.Trainer, cfg: DictConfig, split, run_dir: Path) -> dict:
    """What metrics.json says about the fit, read from what Lightning keeps (also after ddp_spawn)."""
    done = trainer.callback_metrics
    summary = {
        "metrics": _final_metrics(trainer),
        "monitor": cfg.monitor,
        "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", ""),  # a ModelCheckpoint's
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "epochs": int(done.get("run/epochs", trainer.current_epoch)),
        "class_names": split.classes,
        "data": {
            "root": str(split.root),
            "layout": split.layout,
            "counts": split.counts(),
            "skipped": len(split.skipped),
        },
    }
    if "replicas/identical" in done:
        summary["replicas"] = {
            "world_size": int(done["replicas/world_size"]),
            "identical": bool(done["replicas/identical"]),
        }
    return summary


def _cache_images(cfg: DictConfig) -> bool:
    """``auto``: the pre-resized image cache when training on a GPU with augmentation it supports."""
    value = cfg.data.get("cache_images", False)
    if value != "auto":
        return bool(value)
    use = _uses_gpu(cfg) and cfg.data.augment in ("light", "crop", "none") and not cfg.data.cache_features
    if _uses_gpu(cfg) and not use:
        log.info("data.cache_images=auto: not caching images (data.augment=%s or features cached)", cfg.data.augment)
    return use


def _use_feature_cache(
    cfg: DictConfig, datamodule: ClassFolderDataModule, module: VGGClassifier, schedule: Schedule
) -> None:
    if schedule.name != "linear_probe":
        raise UserError(
            f"data.cache_features=true needs a backbone that stays frozen for the whole run: use "
            f"finetune=linear_probe (not {schedule.name}), or data.cache_features=false"
        )
    if cfg.data.get("mixup") or cfg.data.get("cutmix"):
        raise UserError(
            "data.cache_features=true trains the head on features, not images, so there is nothing to "
            "mix: set data.mixup=0 data.cutmix=0, or data.cache_features=false"
        )
    if cfg.data.augment != "none":
        log.warning(
            "data.cache_features=true: each image's features are computed once from the evaluation "
            "transform, so augmentation (data.augment=%s) is off",
            cfg.data.augment,
        )
    device = torch.device("cuda" if _uses_gpu(cfg) else "cpu")
    datamodule.use_cached_features(
        module.model,
        schedule.train_fc,
        weights_identity(str(cfg.model.weights), cfg.seed),
        device,
        module.hparams["head"],
    )


def _fit(trainer: pl.Trainer, module: VGGClassifier, datamodule, ckpt_path: str | None) -> None:
    """``trainer.fit``, exiting 128 + signal number after an interruption saved its checkpoint."""
    # Trainer.callbacks: set by Lightning's CallbackConnector, not declared on the class (Lightning 2.6)
    interrupt = next(c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt))  # type: ignore[attr-defined]
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:  # Lightning turns Ctrl-C and SIGTERM into SystemExit once callbacks have run
        if interrupt.signal is None:
            raise
        sys.exit(interrupt.exit_status)


def build_module(
    cfg: DictConfig,
    class_names: list[str],
    preprocessing: dict,
    class_weights: list[float] | None = None,
    label_delim: str | None = None,
) -> VGGClassifier:
    """The LightningModule, from plain containers only (so checkpoints load with weights_only=True)."""
    model = cfg.model
    if str(model.weights).lower() == "none" and not demo.is_baseline(cfg):
        log.warning(
            "Training %s from random init (model.weights=none): no pretrained weights. For a real "
            "fine-tune, use model.weights=imagenet (downloaded once) or model.weights=/path/to/%s.pth",
            model.arch,
            model.arch,
        )
    channels_last = model.channels_last
    if channels_last == "auto":
        channels_last = _uses_gpu(cfg)
    return VGGClassifier(
        arch=model.arch,
        class_names=list(class_names),
        weights=str(model.weights),
        dropout=float(model.dropout),
        preprocessing=preprocessing,
        optim=_plain(cfg.optim),
        scheduler=_plain(cfg.scheduler),
        finetune=_plain(cfg.finetune),
        channels_last=bool(channels_last),
        compile=bool(model.compile),
        head=str(model.get("head", "vgg")),
        class_weights=class_weights,
        label_delim=label_delim,
        threshold=check_threshold(cfg.get("threshold", "auto")),
        label_smoothing=float(model.get("label_smoothing", 0.0)),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """A Trainer from the trainer, callbacks and logger config groups, plus the callbacks every run needs."""
    tidy_lightning_messages()
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    # SaveOnInterrupt last: a deferred Ctrl-C raises in its on_train_batch_end, after the others' have run.
    callbacks += [
        FreezeSchedule(),
        EpochSeed(cfg.seed),
        ReplicaCheck(),
        StopOnNonFiniteLoss(cfg.trainer.log_every_n_steps),
        SaveOnInterrupt(),
    ]
    loggers = build_loggers(cfg, Path(cfg.paths.run_dir))  # logger=null: none at all
    if loggers:
        callbacks += [EpochSpeed(), *tracker_callbacks(cfg, loggers, Path(cfg.paths.run_dir))]
        callbacks += tensorboard_callbacks(cfg) if has_tensorboard(loggers) else []
    else:  # Lightning's LearningRateMonitor refuses a Trainer without a logger: nothing to monitor into
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    kwargs: dict[str, object] = {}
    if cfg.trainer.precision == "auto":
        kwargs["precision"] = "bf16-mixed" if _uses_gpu(cfg) and torch.cuda.is_bf16_supported() else "32-true"
    if _uses_gpu(cfg):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: VGG's classifier is most of its weights
        if cfg.trainer.benchmark is None:
            kwargs["benchmark"] = True  # fixed input sizes: let cuDNN pick the fastest kernels
    if not cfg.trainer.enable_progress_bar:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=cfg.paths.run_dir,
        **kwargs,
    )


def _uses_gpu(cfg: DictConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _plain(node) -> dict | None:
    return cast(dict, OmegaConf.to_container(node, resolve=True)) if node is not None else None  # of a DictConfig


def _drop_stale_interrupted(run_dir: Path) -> None:
    """After a run finished, an ``interrupted.ckpt`` older than ``last.ckpt`` is a spent state (up to 1.5 GB)."""
    interrupted, last = run_dir / "checkpoints" / INTERRUPTED_CKPT, run_dir / "checkpoints" / "last.ckpt"
    if interrupted.is_file() and last.is_file() and last.stat().st_mtime >= interrupted.stat().st_mtime:
        interrupted.unlink()
        log.info("Removed %s: the run went on past it (last.ckpt is newer)", interrupted)


def _warn_schedule(schedule: Schedule, max_epochs: int) -> None:
    change = schedule.last_change_epoch()  # counted from 0
    if schedule.name in ("freeze_unfreeze", "gradual") and change >= max_epochs:
        log.warning(
            "finetune.%s: everything is unfrozen from epoch %d (counted from 0), so the schedule needs %d "
            "epochs, but trainer.max_epochs=%d; the lower layers stay frozen for part or all of the run "
            "(raise trainer.max_epochs or lower finetune.unfreeze_at_epoch / finetune.every_n_epochs)",
            schedule.name,
            change,
            change + 1,
            max_epochs,
        )


@rank_zero_only
def _prepare_run_folder(split, run_dir: Path) -> None:
    """Write the split and the skipped files, log what the data holds, clear temp files of a killed save."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "checkpoints").glob(".*.ckpt.*.tmp"):  # left by a kill during a save
        stale.unlink(missing_ok=True)
    split.write_csv(run_dir / "split.csv")
    counts = split.counts()
    log.info("Data: %s (%s), %d classes: %s", split.root, split.layout, len(split.classes), ", ".join(split.classes))
    log.info("Images: %s", ", ".join(f"{s} {len(items)}" for s, items in split.subsets.items()))
    train = counts["train"]
    shown = ", ".join(f"{name} {n}" for name, n in list(train.items())[:20]) + (", ..." if len(train) > 20 else "")
    ratio = max(train.values()) / max(1, min(train.values()))
    log.info(
        "Training images per %s: %s (largest / smallest: %.1f)", "label" if split.multilabel else "class", shown, ratio
    )
    write_skipped(run_dir, split.skipped, csv=split.layout.startswith("csv"))


def _final_metrics(trainer: pl.Trainer) -> dict:
    """The last epoch's validation and training metrics; an epoch mean wins over a step value."""
    items = sorted(trainer.callback_metrics.items(), key=lambda kv: kv[0].endswith("_epoch"))
    out = {k.removesuffix("_epoch"): float(v) for k, v in items if k.startswith(("val/", "train/"))}
    if not any(k.startswith("val/") for k in out):
        raise UserError("training ended before any validation ran: raise trainer.max_epochs")
    return out


def run(cfg: DictConfig) -> float | None:
    """The ``vggtune train`` task: train (inside the demo's steps with ``experiment=demo``), and return the
    monitored metric (what sweeps optimise)."""
    summary = demo.around(train, cfg) if cfg.get("demo") else train(cfg)
    return summary["metrics"].get(cfg.monitor)
