"""Composing a task's config, and turning Hydra's composition errors into one line that says what to do.

Split out of :mod:`vggtune.preflight`, which checks a command line with these before anything runs.
"""

from __future__ import annotations

import difflib
import functools
import re
from importlib import resources
from typing import cast

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "vggtune.conf"


def compose_task(task: str, overrides: list[str], hydra_node: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(task, overrides=overrides, return_hydra_config=hydra_node)
    finally:
        GlobalHydra.instance().clear()


@functools.cache
def config_groups() -> frozenset[str]:
    return frozenset(p.name for p in resources.files(CONFIG_MODULE).iterdir() if p.is_dir() and p.name != "__pycache__")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def missing_option(e: MissingConfigException) -> str:
    missing = e.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = e.options or _group_options(group)  # Hydra names none for an option inside a list (logger=[a,b])
    if options and group:
        hint = difflib.get_close_matches(option, options, n=1)
        did_you_mean = f" (did you mean {group}={hint[0]}?)" if hint else ""
        return f"unknown {group} '{option}'{did_you_mean}: choose one of {', '.join(options)}"
    return first_line(e)


def _group_options(group: str) -> list[str]:
    if group not in config_groups():
        return []
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files(CONFIG_MODULE).joinpath(group).iterdir()
        if p.name.endswith(".yaml")
    )


def composition_error(task: str, e: BaseException, overrides: list[str]) -> str:
    m = re.search(r"Could not override '([^']+)'", str(e))
    if m:
        key = m.group(1)
        known = list(flat_items(cast(dict, OmegaConf.to_container(compose_task(task, []), resolve=False))))
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        group = key.split(".", 1)[0]
        if hint == [key] and group in config_groups():  # a key of the default option, which this run replaced
            default = compose_task(task, [], hydra_node=True).hydra.runtime.choices.get(group)
            given = [o.split("=", 1)[1].strip("[]") for o in overrides if o.split("=", 1)[0] == group]
            both = ",".join(dict.fromkeys([default, *(given[-1].split(",") if given else [])]))
            return (
                f"config key '{key}' comes with {group}={default}, which this run does not use: leave the key "
                f"out, or choose that option too: {group}=[{both}]"
            )
        did_you_mean = f"did you mean {hint[0]}? " if hint else ""
        return (
            f"unknown config key '{key}': {did_you_mean}`vggtune {task} --cfg job` lists every key "
            f"(+{key}=... adds a new one)"
        )
    return first_line(e)


def flat_items(cfg: dict, prefix: str = "") -> dict:
    """Every key of a nested dict as a dotted name (nodes too), with its value."""
    items = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        items[name] = v
        if isinstance(v, dict):
            items.update(flat_items(v, f"{name}."))
    return items
