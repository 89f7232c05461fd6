"""The config's shape (vggtune.schema) and conf/ stay in step: every key vggtune reads is declared once, every
default fits its declaration, a declaration's doc is the only one (no comment left beside the key in conf/), and
a value a key does not accept is one line naming the key, what it accepts and what it got."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from vggtune.config_errors import compose_task
from vggtune.core.errors import UserError
from vggtune.schema.check import TASKS, check_config, check_value, declared
from vggtune.schema.groups import GROUPS
from vggtune.schema.kinds import FLAG, Either, Key, Number, OneOf, Whole

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT / "docs"))
import gen_config_reference  # noqa: E402  (docs/ is not a package)

# Every option of the groups `vggtune train` composes beside its defaults: each composed config must fit.
TRAIN_VARIANTS = [
    [f"{group}={path.stem}"]
    for group in ("data", "model", "finetune", "optim", "scheduler", "logger", "trainer")
    for path in sorted((CONF / group).glob("*.yaml"))
] + [["callbacks=[default,ema,early_stopping]"], ["experiment=demo"], ["experiment=demo_multilabel"]]
REQUIRED = {"train": ["data.root=/tmp"], "lr_find": ["data.root=/tmp"], "audit": ["data.root=/tmp"], "serve": []}


def _leaves(node: DictConfig, prefix: str = ""):
    for key in node:
        value = node._get_node(key)
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{name}.")
        else:
            yield name, value


def _passed_through(cfg: DictConfig, name: str) -> bool:
    """Lightning's and Hydra's keys: trainer.* (but max_epochs), the arguments of a _target_ that is not vggtune's."""
    if name.startswith("hydra.") or name.rsplit(".", 1)[-1] in ("_target_", "_partial_"):
        return True
    if name.startswith("trainer."):
        return True
    parts = name.split(".")
    for depth in range(1, len(parts)):
        target = OmegaConf.select(cfg, ".".join(parts[:depth]) + "._target_", default=None)
        if target is not None:
            return not str(target).startswith("vggtune.")
    return False


@pytest.mark.parametrize("variant", TRAIN_VARIANTS, ids=lambda v: v[0])
def test_every_option_of_trains_groups_fits_its_declarations_and_declares_every_key(variant):
    cfg = compose_task("train", [*REQUIRED["train"], *variant], hydra_node=True)
    check_config(cfg, "train")
    ours = declared("train")
    undeclared = [n for n, _ in _leaves(cfg) if n not in ours and not _passed_through(cfg, n)]
    assert not undeclared, f"declare these keys in src/vggtune/schema/: {undeclared}"


@pytest.mark.parametrize("task", sorted(set(TASKS) - {"train"}))
def test_every_declared_commands_keys_are_declared_and_its_defaults_fit(task):
    cfg = compose_task(task, REQUIRED.get(task, []), hydra_node=True)
    check_config(cfg, task)
    ours = declared(task)
    undeclared = [n for n, _ in _leaves(cfg) if n not in ours and not _passed_through(cfg, n)]
    assert not undeclared, f"declare these keys in src/vggtune/schema/: {undeclared}"


def _has(node, path: list[str]) -> bool:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_declared_group_key_is_in_one_of_the_groups_options():
    stale = []
    for group, keys in GROUPS.items():
        options = [yaml.safe_load(p.read_text()) or {} for p in (CONF / group).glob("*.yaml")]
        for name in keys:
            if not any(_has(o, name.split(".")) for o in options):
                stale.append(f"{group}.{name}")
    assert not stale, f"declared but in no option of conf/<group>/: {stale}"


def test_a_declared_key_has_its_doc_in_one_place():
    """The declaration's doc is what the reference prints: a comment beside the key in conf/ would drift from it."""
    both = []
    for path in sorted(CONF.glob("*.yaml")):
        own = declared(path.stem)
        both += [
            f"{path.name}: {'.'.join(p)}"
            for p, k in gen_config_reference.parse(path).keys.items()
            if k.comment and ".".join(p) in own
        ]
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            keys = gen_config_reference.parse(path).keys.items()
            both += [
                f"{group}/{path.name}: {'.'.join(p)}" for p, k in keys if k.comment and ".".join(p) in GROUPS[group]
            ]
    assert not both, f"these keys are documented in vggtune.schema: remove their comments from conf/: {both}"


def test_the_reference_prints_what_a_key_accepts_from_its_declaration():
    page = gen_config_reference.render()
    assert "| `optim.lr` | `adamw: 0.001`" in page or "| `optim.lr` |" in page
    row = next(line for line in page.splitlines() if line.startswith("| `callbacks.progress_bar.mode` |"))
    assert "one of auto, bar, plain" in row and GROUPS["callbacks"]["progress_bar.mode"].doc[:40] in row


@pytest.mark.parametrize(
    "key, value, needles",
    [
        (Key(Whole(1)), True, ("x must be a whole number, 1 or more", "got x=true")),
        (Key(Whole(1)), 2.5, ("whole number", "got x=2.5")),
        (Key(FLAG), 1, ("x must be true or false", "got x=1")),
        (Key(FLAG), "yes", ("true or false", "got x=yes")),
        (Key(Number(0, 1, high_open=True)), 1, ("a number, from 0 to below 1", "got x=1")),
        (Key(Number(0, low_open=True), example="x=1e-3"), 0, ("a positive number, e.g. x=1e-3",)),
        (Key(OneOf("bar", "plain")), "bars", ("one of bar, plain (did you mean x=bar?)",)),
        (Key(Either(OneOf("auto"), Whole(0))), None, ("auto or a whole number, 0 or more", "got x=null")),
        (Key(Number()), float("nan"), ("a number", "got x=nan")),
    ],
)
def test_a_value_a_key_does_not_accept_is_one_line_with_what_it_accepts(key, value, needles):
    with pytest.raises(UserError) as e:
        key.check("x", value)
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_accepted_values_pass_through_unchanged():
    assert Key(Either(OneOf("auto"), FLAG)).check("x", "auto") == "auto"
    assert Key(Whole(0), null=True).check("x", None) is None
    assert check_value("data.num_workers", 0) == 0
    assert check_value("audit.fix", "drop", task="audit") == "drop"
