"""What the Python API (:mod:`vggtune.api`) needs from Hydra: keyword arguments as override strings, and a task
run as ``vggtune <task>`` runs it, with Hydra's global state and the root logger put back afterwards.

A task runs through the command line's own steps: :func:`vggtune.preflight.prepare` checks the overrides
(one-line errors for an unknown key or option, a wrong type, a missing value) and fixes a fresh run folder;
then Hydra's ``run`` composes the config, writes ``.hydra/`` and the log into the run folder and calls the
task, as ``@hydra.main`` does for the command. Composing alone (``hydra.compose``) would give the config
without the run folder, its log and the ``hydra:`` values (``paths.run_dir``) the tasks read.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from vggtune.cli import CONFIG_MODULE, TASKS, discard_empty_run, find_user_error, quiet_lightning
from vggtune.core.errors import UserError
from vggtune.preflight import prepare
from vggtune.tasks.runs import restore_run_config


def to_overrides(overrides: tuple | list = (), options: Mapping[str, Any] | None = None) -> list[str]:
    """Hydra override strings for ``overrides`` (strings, kept as they are) then ``options`` (keyword arguments).

    A keyword names a key or a config group: ``model="vgg11"`` is ``model=vgg11``, ``seed=3`` is ``seed=3``.
    Dots in a name may be written ``__`` (``data__batch_size=8``) or passed as ``**{"data.batch_size": 8}``;
    a dict stands for the keys inside it (``trainer={"max_epochs": 2}`` is ``trainer.max_epochs=2``).
    Values: True/False, None (null; for a group, none of its options), numbers, strings and paths (quoted
    where Hydra's grammar needs it, ``~`` expanded), lists and tuples. A key whose value is itself a mapping
    (``data.storage_options``) takes a Hydra string: ``"data.storage_options={endpoint_url: 'http://...'}"``.
    """
    out = []
    for item in overrides:
        if not isinstance(item, str):
            raise UserError(
                f'{item!r}: give overrides as strings ("trainer.max_epochs=2") or keywords (max_epochs=...)'
            )
        if item.startswith("-"):
            raise UserError(
                f"{item} is a command-line flag: the Python API takes key=value overrides only "
                f"(vggtune <task> {item} ... on the command line)"
            )
        out.append(item)
    for name, value in (options or {}).items():
        out += _keyword(name.replace("__", "."), value)
    return out


def _keyword(key: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        if not value:
            raise UserError(f"{key}={{}}: an empty dict sets nothing; leave it out")
        return [o for k, v in value.items() for o in _keyword(f"{key}.{k}", v)]
    return [f"{key}={hydra_value(value, key)}"]


def hydra_value(value: Any, key: str = "value") -> str:
    """``value`` in Hydra's override grammar, so that Hydra reads back the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v, key) for v in value) + "]"
    if isinstance(value, PurePath):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(
            f"{key}: a {type(value).__name__} cannot be a config value: pass a string, number, bool, None, list or dict"
        )
    value = os.path.expanduser(value) if value.startswith("~") else value
    return value if _reads_back(value) else _quoted(value)


def _quoted(text: str) -> str:
    """``text`` in single quotes: Hydra reads a backslash as an escape only in a run of them before a quote
    (including the closing one), so those runs are doubled and each quote inside gets one."""
    text = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, text) + "'"


def _reads_back(text: str) -> bool:
    """Whether Hydra reads ``text`` unquoted as this very string (not a number, bool, null, list or a syntax error)."""
    try:
        [override] = OverridesParser.create().parse_overrides([f"k={text}"])
    except HydraException:
        return False
    return override.value() == text


@contextlib.contextmanager
def hydra_session() -> Iterator[None]:
    """Hydra initialised on vggtune's configs, then cleared; the root logger's level and handlers put back.

    A run configures logging for its run folder (the console and ``<task>.log``): afterwards that file is
    closed and the notebook's own logging is as it was, so a second run starts as the first did.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def run_task(task: str, overrides: list[str], function: str) -> tuple[Path, Any]:
    """Run the task's ``function(cfg)`` as ``vggtune <task> <overrides>`` runs the task; return the run folder
    and what the function returned.

    The command line's checks come first, and a UserError from them or from the task is raised here with its
    one line (the run folder of a run refused before it produced anything removed, as the command does).
    The task's module is imported inside the run, as the command line does: Lightning, imported before
    Hydra configures logging, would keep its messages out of the run's log.
    """
    args = prepare(task, list(overrides))
    if "-m" in args:
        raise UserError(f"hydra/launcher= runs a sweep: sweeps run from the command line (vggtune {task} -m ...)")
    outcome: dict[str, Any] = {}

    def job(cfg: DictConfig) -> None:
        quiet_lightning()
        outcome["folder"] = Path(str(cfg.paths.run_dir)).absolute()
        try:
            outcome["result"] = getattr(importlib.import_module(TASKS[task][0]), function)(cfg)
        except BaseException as e:  # tidied here, where Hydra's run is set up; raised after it
            outcome["error"] = e
            if task == "train" and cfg.get("resume"):
                restore_run_config(outcome["folder"])
            if find_user_error(e) is not None:
                discard_empty_run()

    with hydra_session():
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None  # hydra_session() initialised it
        hydra.run(config_name=task, task_function=job, overrides=args)
    error = outcome.get("error")
    if error is None:
        return outcome["folder"], outcome["result"]
    user_error = find_user_error(error)
    if user_error is not None:
        raise UserError(str(user_error)) from None  # one line, without the chain of frames inside the task
    if isinstance(error, SystemExit):  # training stopped by Ctrl-C (the kernel's interrupt) after saving
        raise KeyboardInterrupt(f"{task} interrupted: see the log for the checkpoint it saved") from None
    raise error
