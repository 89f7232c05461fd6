"""A LitServer around :class:`~vggtune.serve.api.ClassifierAPI`, with the HTTP adapter, the page, SIGTERM draining
and the handling of overload and dead workers (:mod:`vggtune.serve.faults`)."""

from __future__ import annotations

import logging
import os
import signal
from importlib import resources

from vggtune.serve.backends import load_backend, model_name
from vggtune.serve.http import Counters, RequestAdapter, drain_then_stop, install_routes

log = logging.getLogger(__name__)
API_PATH = "/predict"


def describe(settings: dict) -> dict:
    """Load the model once in this process: a bad checkpoint fails here with one line, before any worker
    starts; returns what ``GET /info`` reports (the workers load their own copies)."""
    # On the CPU: CUDA initialised here would be inherited by the HTTP processes LitServe forks.
    backend = load_backend(
        settings["ckpt"],
        settings["model"],
        "cpu",
        settings["tta"],
        settings["calibrate"],
        settings["threshold"],
        settings["precision"],
    )
    info = {**backend.info(), "device": settings["device"]}
    if settings.get("chosen"):  # backend=auto: what the benchmark measured
        info["chosen_by_benchmark"] = settings["chosen"]
    settings.update(name=model_name(backend.path), version=backend.version)
    return info


def build_server(settings: dict, info: dict):
    """The LitServer and the counters its HTTP processes share; ``settings`` are plain values (the API is
    pickled into each worker)."""
    import litserve.server

    from vggtune.serve.api import ClassifierAPI
    from vggtune.serve.faults import RestartingServer, Watchdog

    if settings["api_key"]:
        # LitServe reads LIT_SERVER_API_KEY from the environment when it is imported, into this global,
        # which each endpoint's X-API-Key check (GET /health and /info included) reads when the server is built.
        litserve.server.LIT_SERVER_API_KEY = settings["api_key"]
    api = ClassifierAPI(settings, max_batch_size=settings["max_batch_size"], batch_timeout=settings["batch_timeout"])
    device = settings["device"]
    accelerator = "cpu" if device == "cpu" else "cuda" if device.startswith("cuda") else "auto"
    server = RestartingServer(
        api,
        accelerator=accelerator,
        devices=1 if accelerator == "cpu" else "auto",
        workers_per_device=settings["workers_per_device"],
        timeout=settings["timeout"],
        model_metadata=info,
    )
    counters = server.counters = Counters(server.worker_count())
    # Added after LitServe's own middlewares, so outermost: a refused request costs no body parsing.
    server.app.add_middleware(
        RequestAdapter,
        path=API_PATH,
        max_bytes=settings["max_request_mb"] * 1_000_000,
        counters=counters,
        max_queue=settings["max_queue"],
        watchdog=Watchdog(server.response_buffer, counters, settings["timeout"]),
    )
    install_routes(
        server.app, resources.files("vggtune.serve").joinpath("page.html").read_text(), counters, server.setup_auth()
    )
    return server, counters


def run_server(settings: dict, info: dict) -> None:
    """Serve until SIGTERM or Ctrl-C. SIGTERM lets the requests in flight finish (new ones get a 503) and exits 0."""
    server, counters = build_server(settings, info)

    main_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != main_pid:  # a process LitServe forked, which inherited this handler: the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.info("SIGTERM: finishing the requests in flight, then stopping (new requests get 503)")
        server.stopping = True
        # LitServe stops on KeyboardInterrupt or its shutdown event; SIGTERM kills it outright, with requests
        # in flight. Setting the event is what its own /shutdown endpoint does.
        if server._shutdown_event is None:  # still starting: nothing in flight yet
            raise KeyboardInterrupt
        drain_then_stop(counters, server._shutdown_event, settings["drain_timeout"])

    def on_sigint(signum, frame):
        # Ctrl-C reaches the model workers too: they stop, and must not be started again as if they had died.
        server.stopping = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)
    log.info(
        "Serving %s (%s, version %s) at http://%s:%d/  (POST %s, GET /info, GET /health)",
        settings["name"],
        info["backend"],
        settings["version"],
        settings["host"],
        settings["port"],
        API_PATH,
    )
    server.run(
        host=settings["host"],
        port=settings["port"],
        generate_client_file=False,
        log_level=settings["log_level"],
        num_api_servers=settings["api_servers"],
    )
    log.info("Stopped: %d requests answered", counters.served.value)
