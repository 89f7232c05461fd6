"""Checks before Hydra starts a run: overrides, the run folder, ``resume=``.

Hydra reports a misspelt key or group option in several lines (and a wrong type not at all,
since plain YAML has no schema), and it writes ``.hydra/`` into the run folder before the task
starts, overwriting an earlier run that used the same folder. We compose the config once with
Hydra's compose API, turn its errors into a single line with the fix, type-check each override
against its key's default, and fix a run folder that is new before Hydra creates it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import cast

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vggtune.config_errors import compose_task, composition_error, config_groups, first_line, flat_items, missing_option
from vggtune.core.errors import RunComplete, UserError
from vggtune.data.discovery import MISSING_ROOT
from vggtune.schema.check import check_config, declared
from vggtune.tasks.checks import check_lr_find, check_train, complete_run
from vggtune.tasks.runs import RESUME_BACKUP, back_up_run_config
from vggtune.training.sweep import check_sweep_strategy, launcher_overrides

log = logging.getLogger(__name__)
# What `vggtune train` logs at the end of each validation (vggtune.model.module); val/acc_top5 with 6+ classes.
# key -> the fix to suggest when it has no value; (task, key) for a hint that only fits one task.
_MISSING_HINTS = {
    "data.root": MISSING_ROOT,
    ("embed", "data.root"): "no data folder given: pass data.root=/path/to/images (a folder of class folders)",
    ("explain", "input"): "no image given: pass input=/path/to/image.jpg (or a folder of images)",
    "ckpt": "no checkpoint given: pass ckpt=<train run folder>/checkpoints/best.ckpt",
    "input": "no input given: pass input=<an image file or a folder of images>",
    ("prepare", "output"): "no output given: pass output=<new folder> or output=s3://bucket/prefix for the shards",
}


def _parse(args: list[str]):
    return get_args_parser().parse_args(args)


def prepare(task: str, args: list[str]) -> list[str]:
    """Check the command line and return it with ``~`` and ``resume=`` expanded and the run folder fixed."""
    args = expand_resume(task, [_drop_null_group(expand_home(a)) for a in args])
    if task == "serve":  # `model` names a config group, so Hydra cannot take model=<file>.onnx as a key
        args = ["onnx=" + a.removeprefix("model=") if a.startswith("model=") else a for a in args]
    parsed = _parse(args)
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return args  # these run nothing
    launcher = next((o.split("=", 1)[1] for o in parsed.overrides if o.startswith("hydra/launcher=")), None)
    if launcher and not parsed.multirun and not parsed.cfg:
        log.info("hydra/launcher=%s runs jobs as a sweep: adding -m", launcher)
        args, parsed = ["-m", *args], _parse(["-m", *args])
    if parsed.multirun:
        return [*args, *_check_sweep(task, list(parsed.overrides))]
    cfg = check_overrides(task, list(parsed.overrides))
    root = _root_from_labels(cfg) or _root_for_stream(task, cfg)
    if root:  # data.labels without data.root: paths in the CSV are relative to its own folder
        args = [root, *args]  # before any flag (--cfg job): argparse takes no override after them
        cfg = check_overrides(task, [*parsed.overrides, root])
    if parsed.cfg or os.environ.get("LOCAL_RANK", "0") != "0":
        return args  # printing the config only; or a DDP rank started inside rank zero's run
    _check_missing(cfg, task)
    ckpt = cfg.get("ckpt")
    if ckpt and task != "train" and not Path(str(ckpt)).expanduser().is_file():  # before the task imports Lightning
        raise UserError(
            f"ckpt {Path(str(ckpt)).expanduser()} does not exist: pass ckpt=<run folder>/checkpoints/best.ckpt"
        )
    if task in ("train", "lr_find"):
        check_train(cfg)
    if task == "lr_find":
        check_lr_find(cfg)
    if task == "train" and (complete := complete_run(cfg)):
        ckpt_dir = Path(str(cfg.ckpt_path)).expanduser().resolve().parent  # <run>/checkpoints/last.ckpt
        raise RunComplete(complete, ckpt_dir.parent)  # before Hydra rewrites the run's .hydra/ or makes a new folder
    run_dir, explicit = _run_dir(cfg, parsed.overrides)
    if explicit:
        check_run_dir(run_dir, cfg.get("ckpt_path"))
        if cfg.get("resume"):
            back_up_run_config(run_dir)  # put back by the cli if the resumed job fails before training
        return args
    return [*args, f"hydra.run.dir='{_fresh(run_dir)}'"]


_HOME_VALUE = re.compile(r"^(?P<key>[+]{0,2}[\w./@-]+=)(?P<value>~[\w.-]*(?:/.*)?)$")


def expand_home(arg: str) -> str:
    """``key=~/x`` as the shell would expand it: the shell leaves ``~`` after ``key=`` alone, and
    Hydra's override grammar refuses it (``LexerNoViableAltException``). Any path-valued key then
    takes ``~``; a ``~`` elsewhere in a value, and Hydra's ``~key`` (delete) are left as they are."""
    match = _HOME_VALUE.match(arg)
    if not match:
        return arg
    expanded = os.path.expanduser(match["value"])
    return arg if expanded == match["value"] else f"{match['key']}{expanded}"


def _drop_null_group(arg: str) -> str:
    """``logger=null`` (a config group set to null) as Hydra 1.3 spells it, ``~logger``: its
    ``group=null`` fails with a ValueError traceback ("Config group override must be a string")."""
    name, _, value = arg.partition("=")
    return f"~{name}" if value == "null" and name in config_groups() else arg


def _check_sweep(task: str, overrides: list[str]) -> list[str]:
    """Compose each launch-relevant variant of a sweep; refuse DDP re-launching; tie SLURM resources."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if o.input_line is not None and not o.is_sweep_override()]
    relevant = [
        o
        for o in parsed
        if o.is_sweep_override()
        and o.key_or_group.startswith(("trainer", "experiment", "hydra/launcher", "hparams_search"))
    ]
    variants = [fixed] + [[*fixed, f"{o.get_key_element()}={v}"] for o in relevant for v in o.sweep_string_iterator()]
    launcher = "basic"
    for variant in variants:
        cfg = check_overrides(task, variant, values=False)  # a job's values: its own error, in the sweep's summary
        launcher = cfg.hydra.runtime.choices.get("hydra/launcher", "basic")
        if "trainer" in cfg:
            check_sweep_strategy(cfg.trainer.get("strategy"), cfg.trainer.get("devices"), launcher)
    return launcher_overrides(launcher, overrides)


def _run_dir(cfg: DictConfig, overrides: list[str]) -> tuple[Path, bool]:
    explicit = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in overrides)
    return Path(str(OmegaConf.select(cfg, "hydra.run.dir"))), explicit


def _fresh(run_dir: Path) -> Path:
    """``run_dir``, or ``run_dir_1``, ``_2`` ... if runs started in the same second."""
    candidate, n = run_dir, 0
    while candidate.exists():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}_{n}")
    return candidate


def check_run_dir(run_dir: Path, ckpt_path: str | None) -> None:
    """Refuse a run folder that already holds files, unless resuming from a checkpoint inside it."""
    taken = run_dir.is_dir() and any(run_dir.iterdir())
    resuming = ckpt_path is not None and Path(str(ckpt_path)).resolve().is_relative_to(run_dir.resolve())
    if taken and not resuming:
        raise UserError(
            f"run folder {run_dir} already holds files; nothing was changed. Choose another "
            f"hydra.run.dir, or continue that run with resume={run_dir}"
        )


def check_overrides(task: str, overrides: list[str], values: bool = True) -> DictConfig:
    """The composed config (with Hydra's node); a UserError for an unknown key, option or wrong type, and (``values``)
    for a value its declaration in vggtune.schema does not accept."""
    try:
        cfg = compose_task(task, overrides, hydra_node=True)
    except MissingConfigException as e:
        raise UserError(missing_option(e)) from None
    except OverrideParseException as e:
        raise UserError(f"could not read the override: {first_line(e)}") from None
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(composition_error(task, e, overrides)) from None
    _check_types(task, overrides)
    if values:
        check_config(cfg, task)
    return cfg


def _root_from_labels(cfg: DictConfig) -> str | None:
    """``data.root=<the CSV's folder>`` when ``data.labels`` is given and ``data.root`` is not."""
    data = cfg.get("data")
    if data is None or not data.get("labels"):
        return None
    if not OmegaConf.is_missing(data, "root") and data.get("root"):  # given: the CSV's paths may be relative to it
        return None
    csv_path = Path(str(data.labels)).expanduser()
    if not csv_path.is_file():
        raise UserError(
            f"data.labels {csv_path}: no such file: pass the path of a CSV file with a column for the "
            "image path and one for the label (and data.root=<folder> if its paths are relative to it)"
        )
    return f"data.root='{csv_path.resolve().parent}'"


def _root_for_stream(task: str, cfg: DictConfig) -> str | None:
    """``data.root=null`` when training from ``data.stream``: the classes and split come from the stream."""
    data = cfg.get("data")
    if task == "prepare" or data is None or not data.get("stream") or not OmegaConf.is_missing(data, "root"):
        return None
    return "data.root=null"


def _check_missing(cfg: DictConfig, task: str) -> None:
    flat = flat_items(cast(dict, OmegaConf.to_container(cfg, resolve=False)))
    missing = sorted(k for k, v in flat.items() if v == "???" and not k.startswith("hydra."))
    if missing:
        key = missing[0]
        hint = _MISSING_HINTS.get((task, key)) or _MISSING_HINTS.get(key)
        raise UserError(hint or f"{key} has no value: pass {key}=...")


def _check_types(task: str, overrides: list[str]) -> None:
    """An override of a key that vggtune.schema does not declare (Lightning's, passed through) must keep the type
    of its default where that is a number or a boolean; declared keys are checked by their declarations."""
    groups, ours = config_groups(), declared(task)
    defaults = compose_task(task, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in groups])
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.package is not None or key.startswith("hydra") or "/" in key or override.is_delete() or key in ours:
            continue
        default = OmegaConf.select(defaults, key, throw_on_missing=False, default=None)
        value = override.value()
        if default is None or value is None or isinstance(value, (list, dict)):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            kind = {bool: "true or false", int: "a whole number", float: "a number"}[type(default)]
            raise UserError(f"{key} must be {kind} (its default is {default}), got {value!r}")


def expand_resume(task: str, args: list[str]) -> list[str]:
    """Turn ``resume=<run folder>`` into that run's own overrides plus its folder and last checkpoint."""
    overrides = list(_parse(args).overrides)
    resume = [a for a in overrides if a.split("=", 1)[0] == "resume"]
    if task != "train" or not resume:
        return args
    run_dir = Path(resume[-1].split("=", 1)[1].strip("'\"")).expanduser()
    found = [p for p in (run_dir / "checkpoints" / n for n in ("last.ckpt", "interrupted.ckpt")) if p.is_file()]
    if not found:
        raise UserError(
            f"cannot resume {run_dir}: it has no checkpoints/last.ckpt or interrupted.ckpt "
            "(resume=<run folder> of a run that saved at least one epoch or was interrupted)"
        )
    last = max(found, key=lambda p: p.stat().st_mtime)  # the latest state
    saved_file = run_dir / RESUME_BACKUP / "overrides.yaml"  # left by a resume that failed before training
    saved_file = saved_file if saved_file.is_file() else run_dir / ".hydra" / "overrides.yaml"
    saved = list(OmegaConf.load(saved_file)) if saved_file.is_file() else []
    ours = {"resume", "ckpt_path", "hydra.run.dir"}
    merged = {}
    for a in [*saved, *overrides]:
        key = a.split("=", 1)[0].lstrip("+~")
        if key not in ours:
            merged[key] = a
    flags = [a for a in args if a not in overrides]
    return [*flags, *merged.values(), f"resume='{run_dir}'", f"ckpt_path='{last}'", f"hydra.run.dir='{run_dir}'"]
