"""Checks before Hydra starts a run: overrides, the run folder, ``resume=``.

Hydra reports a misspelt key or group option in several lines (and a wrong type not at all,
since plain YAML has no schema), and it writes ``.hydra/`` into the run folder before the task
starts, overwriting an earlier run that used the same folder. We compose the config once with
Hydra's compose API, turn its errors into a single line with the fix, type-check each override
against its key's default, and fix a run folder that is new before Hydra creates it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vggtune.arch import check_head
from vggtune.dataset import MISSING_ROOT
from vggtune.errors import UserError
from vggtune.progress import check_progress_options
from vggtune.runs import RESUME_BACKUP, back_up_run_config
from vggtune.sweep import check_sweep_strategy, launcher_overrides

log = logging.getLogger(__name__)
CONFIG_MODULE = "vggtune.conf"
# What `vggtune train` logs at the end of each validation (vggtune.module); val/acc_top5 with 5+ classes.
MONITORS = ("val/acc", "val/f1", "val/loss", "val/acc_top5", "val/acc_best")
# key -> the fix to suggest when it has no value; (task, key) for a hint that only fits one task.
_MISSING_HINTS = {
    "data.root": MISSING_ROOT,
    ("embed", "data.root"): "no data folder given: pass data.root=/path/to/images (a folder of class folders)",
    ("explain", "input"): "no image given: pass input=/path/to/image.jpg (or a folder of images)",
    "ckpt": "no checkpoint given: pass ckpt=<train run folder>/checkpoints/best.ckpt",
    "input": "no input given: pass input=<an image file or a folder of images>",
}


def _parse(args: list[str]):
    return get_args_parser().parse_args(args)


def _compose(task: str, overrides: list[str], hydra_node: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(task, overrides=overrides, return_hydra_config=hydra_node)
    finally:
        GlobalHydra.instance().clear()


def prepare(task: str, args: list[str]) -> list[str]:
    """Check the command line and return it with ``~`` and ``resume=`` expanded and the run folder fixed."""
    args = expand_resume(task, [_drop_null_group(expand_home(a)) for a in args])
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
    if parsed.cfg or os.environ.get("LOCAL_RANK", "0") != "0":
        return args  # printing the config only; or a DDP rank started inside rank zero's run
    _check_missing(cfg, task)
    if task in ("train", "lr_find"):
        check_train(cfg)
    if task == "lr_find":
        check_lr_find(cfg)
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
    return f"~{name}" if value == "null" and name in _config_groups() else arg


@functools.cache
def _config_groups() -> frozenset[str]:
    return frozenset(p.name for p in resources.files(CONFIG_MODULE).iterdir() if p.is_dir() and p.name != "__pycache__")


def _check_sweep(task: str, overrides: list[str]) -> list[str]:
    """Compose each launch-relevant variant of a sweep; refuse DDP re-launching; tie SLURM resources."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    relevant = [o for o in parsed if o.is_sweep_override()
                and o.key_or_group.startswith(("trainer", "experiment", "hydra/launcher", "hparams_search"))]
    variants = [fixed] + [[*fixed, f"{o.get_key_element()}={v}"] for o in relevant for v in o.sweep_string_iterator()]
    launcher = "basic"
    for variant in variants:
        cfg = check_overrides(task, variant)
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
        raise UserError(f"run folder {run_dir} already holds files; nothing was changed. Choose another "
                        f"hydra.run.dir, or continue that run with resume={run_dir}")


def check_train(cfg: DictConfig) -> None:
    """Values of ``vggtune train`` that would otherwise fail minutes later, or not at all."""
    epochs = cfg.trainer.get("max_epochs")
    if not _is_number(epochs, whole=True) or epochs < 1:
        raise UserError(f"trainer.max_epochs must be a whole number, 1 or more (the learning-rate and freeze "
                        f"schedules are laid out over it), got {epochs!r}")
    lr = cfg.optim.get("lr")
    if not _is_number(lr) or lr <= 0:
        raise UserError(f"optim.lr must be a positive number, e.g. optim.lr=1e-3, got {lr!r}")
    if cfg.monitor not in MONITORS:
        hint = difflib.get_close_matches(str(cfg.monitor), MONITORS, n=1)
        did_you_mean = f" (did you mean monitor={hint[0]}?)" if hint else ""
        raise UserError(f"monitor={cfg.monitor} is not a metric vggtune train logs{did_you_mean}: choose one of "
                        f"{', '.join(MONITORS)}")
    if cfg.monitor_mode not in ("max", "min"):
        raise UserError(f"monitor_mode must be max or min, got {cfg.monitor_mode!r}")
    warmup = OmegaConf.select(cfg, "scheduler.warmup_fraction", default=None)
    if warmup is not None and (not _is_number(warmup) or not 0 <= warmup < 1):
        raise UserError(f"scheduler.warmup_fraction is the share of the run spent warming up: a number from 0 "
                        f"to below 1, got {warmup!r}")
    check_head(str(cfg.model.get("head", "vgg")))
    bar = OmegaConf.select(cfg, "callbacks.progress_bar", default=None)
    if bar is not None and str(bar.get("_target_", "")).startswith("vggtune."):
        check_progress_options(bar.get("mode", "auto"), bar.get("refresh_seconds", 1.0), bar.get("every_n_steps", 50))
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(Path(str(cfg.ckpt_path)).expanduser(), str(cfg.model.arch))


def check_lr_find(cfg: DictConfig) -> None:
    """The range test's own keys (before a run folder is made)."""
    opts = cfg.lr_find
    if not (_is_number(opts.min_lr) and _is_number(opts.max_lr) and 0 < opts.min_lr < opts.max_lr):
        raise UserError(f"lr_find.min_lr must be above 0 and below lr_find.max_lr, got {opts.min_lr} and {opts.max_lr}")
    if not _is_number(opts.num_training, whole=True) or opts.num_training < 5:
        raise UserError(f"lr_find.num_training must be a whole number of steps, at least 5, got {opts.num_training!r}")


def _is_number(value, whole: bool = False) -> bool:
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_resume_checkpoint(path: Path, arch: str) -> None:
    """``ckpt_path`` must be a full training state written by ``vggtune train`` for the same model."""
    from vggtune.checkpoint import read_checkpoint

    fix = "pass ckpt_path=<run folder>/checkpoints/last.ckpt, or resume=<run folder>"
    ckpt = read_checkpoint(path, "ckpt_path", fix)
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise UserError(f"{path} holds model weights only (best.ckpt is saved that way), not a training state to "
                        f"resume: pass ckpt_path={path.parent / 'last.ckpt'}, or resume=<run folder>")
    trained = (ckpt.get("hyper_parameters") or {}).get("arch")
    if trained != arch:
        raise UserError(f"{path} was trained as {trained}, but this run builds model={arch}: leave model= out to "
                        f"continue that run (a different model needs a new run); nothing was changed")


def check_overrides(task: str, overrides: list[str]) -> DictConfig:
    """The composed config (with Hydra's node); a UserError for an unknown key, option or wrong type."""
    try:
        cfg = _compose(task, overrides, hydra_node=True)
    except MissingConfigException as e:
        raise UserError(_missing_option(e)) from None
    except OverrideParseException as e:
        raise UserError(f"could not read the override: {_first_line(e)}") from None
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(_composition_error(task, e)) from None
    _check_types(task, overrides)
    return cfg


def _check_missing(cfg: DictConfig, task: str) -> None:
    flat = _flat_items(OmegaConf.to_container(cfg, resolve=False))
    missing = sorted(k for k, v in flat.items() if v == "???" and not k.startswith("hydra."))
    if missing:
        key = missing[0]
        hint = _MISSING_HINTS.get((task, key)) or _MISSING_HINTS.get(key)
        raise UserError(hint or f"{key} has no value: pass {key}=...")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _missing_option(e: MissingConfigException) -> str:
    missing = e.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    if e.options and group:
        hint = difflib.get_close_matches(option, e.options, n=1)
        did_you_mean = f" (did you mean {group}={hint[0]}?)" if hint else ""
        return f"unknown {group} '{option}'{did_you_mean}: choose one of {', '.join(e.options)}"
    return _first_line(e)


def _composition_error(task: str, e: BaseException) -> str:
    m = re.search(r"Could not override '([^']+)'", str(e))
    if m:
        key = m.group(1)
        known = list(_flat_items(OmegaConf.to_container(_compose(task, []), resolve=False)))
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        did_you_mean = f"did you mean {hint[0]}? " if hint else ""
        return (f"unknown config key '{key}': {did_you_mean}`vggtune {task} --cfg job` lists every key "
                f"(+{key}=... adds a new one)")
    return _first_line(e)


def _flat_items(cfg: dict, prefix: str = "") -> dict:
    """Every key of a nested dict as a dotted name (nodes too), with its value."""
    items = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        items[name] = v
        if isinstance(v, dict):
            items.update(_flat_items(v, f"{name}."))
    return items


def _check_types(task: str, overrides: list[str]) -> None:
    """An override must keep the type of a key whose default is a number or a boolean."""
    groups = _config_groups()
    defaults = _compose(task, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in groups])
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.package is not None or key.startswith("hydra") or "/" in key or override.is_delete():
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
        raise UserError(f"cannot resume {run_dir}: it has no checkpoints/last.ckpt or interrupted.ckpt "
                        "(resume=<run folder> of a run that saved at least one epoch or was interrupted)")
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
