"""A composed config held against the declarations: each declared key that the config has must be one of the
values its declaration accepts (``check_config``); ``check_value`` checks one value given some other way (a
keyword of the Python API, a constructor's argument)."""

from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vggtune.schema.groups import GROUPS
from vggtune.schema.kinds import Key
from vggtune.schema.tasks import AUDIT, EMBED, EXPLAIN, LR_FIND, PREPARE, SUMMARY, TRAIN
from vggtune.schema.using import BENCHMARK, EVAL, EXPORT, PREDICT, SERVE

# In the order they are checked: the first wrong key is the one reported (the schedules' before the data's).
_TRAIN_GROUPS = ("trainer", "optim", "scheduler", "finetune", "model", "data", "callbacks", "logger", "paths")
# task -> (its own keys, the config groups it composes)
TASKS: dict[str, tuple[dict[str, Key], tuple[str, ...]]] = {
    "train": (TRAIN, _TRAIN_GROUPS),
    "lr_find": ({**TRAIN, **LR_FIND}, _TRAIN_GROUPS),
    "audit": (AUDIT, ("data", "model", "paths")),
    "serve": (SERVE, ("paths",)),
    "eval": (EVAL, ("paths",)),
    "predict": (PREDICT, ("paths",)),
    "export": (EXPORT, ("paths",)),
    "benchmark": (BENCHMARK, ("paths",)),
    "embed": (EMBED, ("paths", "model")),
    "explain": (EXPLAIN, ("paths", "model")),
    "prepare": (PREPARE, ("paths", "data", "model")),
    "summary": (SUMMARY, ("paths", "model", "finetune")),
}


@functools.cache
def declared(task: str) -> dict[str, Key]:
    """Every key declared for ``task``'s composed config, by its full dotted name (do not change the dict: it is
    shared); empty for a task that is not declared."""
    own, groups = TASKS.get(task, ({}, ()))
    return {**{f"{g}.{name}": key for g in groups for name, key in GROUPS[g].items()}, **own}


def check_config(cfg: DictConfig, task: str) -> None:
    """A UserError for the first declared key of ``cfg`` whose value its declaration does not accept."""
    parents: dict[str, object] = {}  # each node looked up once: a few ms for train's hundred keys
    for name, key in declared(task).items():
        found, value = _value(cfg, name, parents)
        if found:
            key.check(name, value)


def check_value(name: str, value, task: str = "train"):
    """``value`` if the key ``name`` (a full dotted name, as in ``task``'s config) accepts it, else a UserError."""
    return declared(task)[name].check(name, value)


def _value(cfg: DictConfig, name: str, parents: dict | None = None) -> tuple[bool, object]:
    """Whether ``cfg`` has a value for ``name`` that can be read now, and that value (interpolations resolved).

    A missing value (``???``) is the command line's to report; an interpolation of Hydra's run-time
    (``${hydra:runtime.output_dir}``) cannot be resolved before the run starts: neither is checked here.
    """
    parent, _, leaf = name.rpartition(".")
    parents = {} if parents is None else parents
    if parent not in parents:
        parents[parent] = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    node = parents[parent]
    if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
        return False, None
    try:
        return True, node[leaf]
    except OmegaConfBaseException:
        return False, None
