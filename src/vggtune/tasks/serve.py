"""``vggtune serve``: a checkpoint or an exported ONNX file behind an HTTP API with dynamic batching, and a web page.

Every setting is checked, and the model loaded once, before LitServe starts its processes: a
wrong value or a bad file is one line and exit 2, not a worker's traceback.
"""

from __future__ import annotations

import logging
import os
import socket

from omegaconf import DictConfig

from vggtune.core.errors import UserError
from vggtune.schema.check import check_config
from vggtune.tasks.checks import check_threshold

log = logging.getLogger(__name__)


def settings_from(cfg: DictConfig) -> dict:
    """The checked settings, as plain values."""
    try:
        import litserve  # noqa: F401 - only checking that the optional extra is installed
    except ImportError:
        raise UserError("vggtune serve needs LitServe: pip install 'vggtune[serve]'") from None
    check_config(cfg, "serve")  # each key as vggtune.schema declares it
    port = int(cfg.port)
    _check_port_free(str(cfg.host), port)
    if float(cfg.batch_timeout) >= float(cfg.timeout) > 0:
        raise UserError(f"batch_timeout ({cfg.batch_timeout}) must be less than timeout ({cfg.timeout})")
    api_servers = cfg.get("api_servers")
    return {
        "ckpt": cfg.ckpt,
        "model": cfg.onnx,
        "host": str(cfg.host),
        "port": port,
        "device": str(cfg.device),
        "workers_per_device": int(cfg.workers_per_device),
        "api_servers": None if api_servers is None else int(api_servers),
        "max_batch_size": int(cfg.max_batch_size),
        "batch_timeout": float(cfg.batch_timeout),
        "timeout": float(cfg.timeout) or False,
        "drain_timeout": float(cfg.drain_timeout),
        "top_k": int(cfg.top_k),
        "calibrate": bool(cfg.calibrate),
        "tta": str(cfg.tta),
        "threshold": check_threshold(cfg.get("threshold", "auto")) or "auto",
        "max_request_mb": int(cfg.max_request_mb),
        "max_pixels": int(cfg.max_pixels),
        "log_level": str(cfg.log_level),
        "max_queue": int(cfg.max_queue) if cfg.get("max_queue") else None,  # 0 or null: no bound, as LitServe queues
        "api_key": cfg.get("api_key"),
        "backend": cfg.get("backend"),
        "precision": str(cfg.get("precision", "fp32")),
        "chosen": None,
    }


def exposure_warning(settings: dict) -> str | None:
    """The warning for a server on every interface that anyone who reaches it can use, else None."""
    if settings["host"] == "127.0.0.1" or settings["api_key"] or os.environ.get("LIT_SERVER_API_KEY"):
        return None
    return (
        f"host={settings['host']} serves on every network interface without an api_key: anyone who can reach "
        "this machine can use the model; set api_key=<secret> (clients send it as X-API-Key) or put the server "
        "behind a proxy that checks who calls"
    )


def _check_port_free(host: str, port: int) -> None:
    """Bind as uvicorn will (SO_REUSEADDR): a port another server listens on is one line, not a traceback."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(
                f"cannot listen on {host}:{port} ({e.strerror}): another server uses it; pass port=<a free one>"
            ) from None


def run(cfg: DictConfig) -> str:
    """Serve until SIGTERM (requests in flight finish; exit 0) or Ctrl-C."""
    from vggtune.serve.choice import choose
    from vggtune.serve.server import describe, run_server
    from vggtune.use.inference import pick_device

    settings = settings_from(cfg)
    if warning := exposure_warning(settings):
        log.warning(warning)
    device = pick_device(settings["device"])  # a UserError for device=cuda without a GPU
    settings["device"] = "cpu" if device.type == "cpu" else settings["device"]
    choose(settings)
    info = describe(settings)
    run_server(settings, info)
    return f"served {settings['name']}"
