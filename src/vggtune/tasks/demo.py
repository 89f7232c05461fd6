"""The offline demo's two extra steps around ``vggtune train experiment=demo``: make its pretrained file
before the fine-tune, and train the same network from random init after it, to compare."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from vggtune.model.finetune import FROM_SCRATCH
from vggtune.tasks.runs import rel
from vggtune.training.demo_weights import demo_weights

log = logging.getLogger(__name__)

SCRATCH_DIR = "from_scratch"


def around(train: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """``train(cfg)`` between the demo's steps: its pretrained file first (made once), then, on rank zero,
    the same run from random init and one line comparing the two. Returns the fine-tune's summary.

    ``train`` is passed in (:func:`vggtune.tasks.train.train`) so that the core task knows nothing of these steps.
    """
    prepare(cfg)
    summary = train(cfg)
    # rank_zero_only.rank: set by Lightning at import, not declared on the function (lightning_utilities)
    scratch_cfg = scratch_config(cfg) if rank_zero_only.rank == 0 else None  # type: ignore[attr-defined]
    if scratch_cfg is not None:
        log.info("Demo: now the same network from random init, on the same images, for comparison")
        report(summary, train(scratch_cfg), cfg.monitor, cfg.paths.run_dir)
    return summary


def prepare(cfg: DictConfig) -> None:
    """With ``demo.pretrain``: write ``model.weights`` (the demo's pretrained conv layers) if it is missing."""
    pretrain = (cfg.get("demo") or {}).get("pretrain")
    if pretrain:
        demo_weights(
            cfg.model.weights,
            cfg.model.arch,
            cfg.data.image_size,
            seed=cfg.seed,
            **cast(dict, OmegaConf.to_container(pretrain)),
        )


def scratch_config(cfg: DictConfig) -> DictConfig | None:
    """The run to compare with (``demo.compare_from_scratch``): the same network, images, epochs and seed
    from random init, trained as ``model.weights=none`` trains by default (every layer, one learning
    rate), into ``from_scratch/`` in the run folder, without checkpoints. None when not asked for."""
    if not (cfg.get("demo") or {}).get("compare_from_scratch") or cfg.get("resume"):
        return None
    scratch = cfg.copy()
    with open_dict(scratch):
        scratch.demo = {"baseline": True}
        scratch.paths.run_dir = f"{cfg.paths.run_dir}/{SCRATCH_DIR}"
        scratch.model.weights = "none"
        scratch.finetune.update(FROM_SCRATCH)
        scratch.callbacks.best_checkpoint = scratch.callbacks.last_checkpoint = None
        scratch.test_after_fit = False
        scratch.ckpt_path = None
    return scratch


def is_baseline(cfg: DictConfig) -> bool:
    """Whether ``cfg`` is the demo's run from random init (trained on purpose: no warning, no summary)."""
    return bool((cfg.get("demo") or {}).get("baseline"))


def report(pretrained: dict, scratch: dict, monitor: str, run_dir) -> None:
    """The fine-tune from the pretrained file beside the run from random init, in one line."""
    a, b = pretrained["metrics"].get(monitor), scratch["metrics"].get(monitor)
    log.info(
        "Demo: %s %.3f fine-tuned from the pretrained conv layers, %.3f from random init (the same network, "
        "images, epochs and seed; in %s/). TensorBoard shows both runs: tensorboard --logdir %s",
        monitor,
        a,
        b,
        SCRATCH_DIR,
        rel(run_dir),
    )
