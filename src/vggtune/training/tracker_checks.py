"""Checks of the ``logger`` config group before a run folder is made (no Lightning import: the command line
runs them before Hydra starts): each tracker's package is installed, a tracking server answers, W&B has a key."""

from __future__ import annotations

import importlib
import netrc
import os
import urllib.error
from urllib.parse import urlparse

from omegaconf import DictConfig

from vggtune.core.errors import UserError
from vggtune.core.proxies import fresh_opener
from vggtune.schema.check import check_value

# Trackers that need a package vggtune does not depend on: option -> (module, pip extra).
EXTRAS = {"mlflow": ("mlflow", "vggtune[mlflow]"), "wandb": ("wandb", "vggtune[wandb]")}
# How long the check of a tracking server waits: MLflow itself retries a refused connection for minutes.
SERVER_CHECK_SECONDS = 10


def chosen(cfg: DictConfig) -> dict[str, DictConfig]:
    """The logger group's trackers by option name (each node has a ``_target_``); empty for ``logger=null``."""
    group = cfg.get("logger") or {}
    return {name: node for name, node in group.items() if isinstance(node, DictConfig) and "_target_" in node}


def check_loggers(cfg: DictConfig) -> None:
    """Before a run folder is made: each tracker's package is installed, its server answers, W&B online has a key
    (the keys' values are checked against their declarations in vggtune.schema)."""
    trackers = chosen(cfg)
    for name in trackers:
        if name in EXTRAS:
            _require(name, *EXTRAS[name])
    if "mlflow" in trackers:
        check_tracking_uri(str(trackers["mlflow"].get("tracking_uri")))
    if "wandb" in trackers:
        check_wandb_mode(str(trackers["wandb"].get("mode")))


def _require(option: str, module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"logger={option} needs the {module} package, which is not installed: "
            f'pip install "{extra}" (or choose another logger, e.g. logger=tensorboard)'
        ) from None


def check_tracking_uri(uri: str) -> None:
    """An http(s) MLflow tracking URI answers; any HTTP status counts (a server with auth says 401)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return  # a local store (sqlite:, file:) or a managed one (databricks) that MLflow reaches its own way
    try:
        fresh_opener().open(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_SECONDS).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(
            f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there ({reason}); start one "
            "(mlflow server --host 127.0.0.1 --port 5000), or leave tracking_uri out for the local store "
            "in outputs/mlflow"
        ) from None


def check_wandb_mode(mode: str) -> None:
    """``offline`` or ``disabled`` need nothing; ``online`` needs an API key, or wandb would ask for one and wait."""
    check_value("logger.wandb.mode", mode)
    if mode == "online" and not os.environ.get("WANDB_API_KEY") and not _wandb_netrc_key():
        raise UserError(
            "logger.wandb.mode=online needs your W&B API key: export WANDB_API_KEY=<key> "
            "(from https://wandb.ai/authorize) or run `wandb login`; or keep logger.wandb.mode=offline"
        )


def _wandb_netrc_key() -> bool:
    """Whether ``wandb login`` stored a key (it writes ~/.netrc, or $NETRC) for the W&B host."""
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False
