"""Shared fixtures: tiny generated class folders, the real CLI in a subprocess, one trained tiny run."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

from vggtune.data.demo import PATTERNS, draw_pattern

# The smallest honest training run: 32 px, vgg11 from random init, CPU, one epoch, no workers.
# Plain SGD keeps no optimizer state, so a checkpoint is the model's 0.5 GB, not 1.5 GB with AdamW's
# two moments: the suite spends its time training, not writing files. (AdamW is trained in-process
# by test_finetune.py.)
TINY = [
    "model=vgg11",
    "model.weights=none",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "finetune=full",
    "optim=sgd",
    "optim.momentum=0",
    "optim.nesterov=false",
]


def linear_probe_from_a_weights_file(
    tmp_path: Path, data: Path, *extra: str
) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """Save a seeded random vgg11 state dict, run ``train finetune=linear_probe`` from it: (state, run folder, process)."""
    import torch
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.vgg11().state_dict()
    torch.save(state, tmp_path / "vgg11-local.pth")
    run_dir = tmp_path / "run"
    proc = run_cli_here(
        "train",
        f"data.root={data}",
        *[a for a in TINY if not a.startswith(("model.weights", "finetune"))],
        f"model.weights={tmp_path / 'vgg11-local.pth'}",
        "finetune=linear_probe",
        *extra,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    return state, run_dir, proc


def make_class_folders(root: Path, classes: int = 3, per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    """``classes`` folders of ``per_class`` small PNG/JPEG images of distinct shapes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / (PATTERNS[c] if c < len(PATTERNS) else f"class{c}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".jpg" if i % 2 else ".png"
            draw_pattern(PATTERNS[c % len(PATTERNS)], size, rng).save(folder / f"img_{i:03d}{ext}")
    return root


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of a run folder whose checkpoints are hard links (no 0.5 GB copies)."""

    def link_checkpoints(src, dst):
        return os.link(src, dst) if src.endswith(".ckpt") else shutil.copy2(src, dst)

    return Path(shutil.copytree(run_dir, dest, copy_function=link_checkpoints))


def vggtune_command() -> list[str]:
    """The installed console script next to this Python, as a user would run it."""
    script = Path(sys.executable).parent / "vggtune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vggtune"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``vggtune <args>`` in ``cwd`` and return the finished process (output captured as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [*vggtune_command(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_cli_here(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``vggtune <args>`` inside the test process: the same ``cli.main``, without paying for a new
    Python that imports torch and Lightning again (seconds per call). Use it where the point is the
    message and the exit status; :func:`run_cli` tests the installed command itself.

    The process is left as it was found (:class:`ProcessState`): a run that cached something process-wide
    (urllib's opener, with the proxies of its environment) must not reach the tests after it (issue 29)."""
    from vggtune import cli

    out, err, status = io.StringIO(), io.StringIO(), 0
    with ProcessState():
        os.chdir(cwd)
        os.environ.update(env or {})
        os.environ.pop("HYDRA_FULL_ERROR", None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main(list(args))
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=err)
            status = 1
    return subprocess.CompletedProcess(["vggtune", *args], status, out.getvalue(), err.getvalue())


class ProcessState:
    """What a command run in this process may change process-wide, saved on entry and put back on exit:
    the folder, the environment, urllib's cached opener (it keeps the proxies of the environment it was
    built in), warnings filters, torch's thread count and hub folder, the SIGINT/SIGTERM handlers, each
    logger's level, handlers and filters (Hydra configures the root; vggtune quiets Lightning's), and
    Hydra's global state. A logger first made during the run (by an import) keeps what its module gave it,
    as it would in a process that imported the module then."""

    def __enter__(self) -> ProcessState:
        import urllib.request

        import torch

        self.cwd, self.env = os.getcwd(), dict(os.environ)
        self.opener = urllib.request._opener
        self.warning_filters = list(warnings.filters)
        self.threads, self.hub_dir = torch.get_num_threads(), torch.hub._hub_dir
        self.handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.loggers = {name: _logger_state(logger) for name, logger in _loggers().items()}
        return self

    def __exit__(self, *exc) -> None:
        import urllib.request

        import torch
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.env)
        urllib.request.install_opener(self.opener)
        warnings.filters[:] = self.warning_filters
        warnings._filters_mutated()  # the module's cache of which warnings were shown
        torch.set_num_threads(self.threads)
        torch.hub._hub_dir = self.hub_dir
        for s, handler in self.handlers.items():
            signal.signal(s, handler)
        loggers = _loggers()  # those made by an import during the run keep what the import gave them
        for name, (level, handlers, filters, propagate, disabled) in self.loggers.items():
            logger = loggers[name]
            logger.setLevel(level)
            logger.handlers[:], logger.filters[:] = handlers, filters
            logger.propagate, logger.disabled = propagate, disabled
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # a job's Hydra node, which Hydra leaves set after the run (test_api checks)

    def snapshot(self) -> dict:
        """The state now, comparable with ``==`` (tests/test_proxies.py checks that a run leaves it as it was)."""
        import urllib.request

        import torch

        return {
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "opener": urllib.request._opener,
            "warnings": list(warnings.filters),
            "threads": torch.get_num_threads(),
            "hub": torch.hub._hub_dir,
            "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
            "loggers": {n: _logger_state(lg) for n, lg in _loggers().items()},
        }


def _loggers() -> dict[str, logging.Logger]:
    manager = logging.Logger.manager
    return {
        "": logging.getLogger(),
        **{n: lg for n, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)},
    }


def _logger_state(logger: logging.Logger) -> tuple:
    return logger.level, list(logger.handlers), list(logger.filters), logger.propagate, logger.disabled


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with status 2 and one ``error:`` line containing each needle; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def pytest_collection_finish(session):
    """Move everything imported so far (torch, Lightning, every test module: about half a million objects) out
    of the collector's sight, so that the full collection after each test (:func:`pytest_runtest_teardown`)
    looks at what that test made only."""
    gc.collect()
    gc.freeze()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After each test's teardown, collect what it made now: a Trainer and its module keep each other alive in
    reference cycles, and 0.5 GB models waiting for Python's occasional full collection add up to an OOM kill.
    Then freeze what survived (modules the test imported, caches, module-scoped fixtures), so that the next
    collection skips it too.

    Measured on the quick tier under xdist, two workers: these collections took 124 s of the tier's 273 s of
    test time, each one walking the ~700,000 objects of a worker that had imported more after collection
    (litserve, onnx, scikit-learn...); freezing after each test takes most of that away (CONTRIBUTING, "Quick or
    slow"). A frozen object that later becomes cyclic garbage (a module-scoped run's
    Trainer, after its module) is only freed once unfrozen, so when the process has grown by GROWTH_BEFORE_FULL
    since the last full collection, everything is unfrozen and collected once."""
    yield
    global _rss_after_full
    rss = _rss()
    if rss is None or _rss_after_full is None or rss - _rss_after_full > GROWTH_BEFORE_FULL:
        gc.unfreeze()
        gc.collect()
        _rss_after_full = _rss()
    else:
        gc.collect()
    gc.freeze()


GROWTH_BEFORE_FULL = 2 << 30  # bytes of resident memory: four VGG16s' weights
_rss_after_full: int | None = None


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Three class folders of ten 40 px images each (shared, read-only)."""
    return make_class_folders(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_data) -> Path:
    """A checkpoint of ``tiny_data``'s classes written by Lightning from a seeded, untrained model: what a run's
    ``best.ckpt`` holds (hyperparameters, preprocessing, the ``vggtune`` marker) without a training run.

    For the quick tier: tests that need *a* checkpoint (eval, predict, export, explain, settings checks)
    compare against this model's own outputs, so it need not have learned anything. Tests of what a
    training run writes read :func:`tiny_run` instead (one in-process training per worker, ~7 s of CPU)."""
    import lightning.pytorch as pl
    import torch

    from vggtune.model.arch import preprocessing
    from vggtune.model.checkpoint import AtomicCheckpointIO
    from vggtune.model.module import VGGClassifier

    classes = sorted(d.name for d in tiny_data.iterdir() if d.is_dir())
    torch.manual_seed(0)
    module = VGGClassifier(
        "vgg11", classes, weights="none", head="pooled", preprocessing=preprocessing("vgg11", 32).to_dict()
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, plugins=[AtomicCheckpointIO()]
    )
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """One finished tiny training run through the CLI (in this process); returns its run folder."""
    work = tmp_path_factory.mktemp("work")
    run_dir = work / "outputs" / "tiny"
    proc = run_cli_here("train", f"data.root={tiny_data}", *TINY, f"hydra.run.dir={run_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir
