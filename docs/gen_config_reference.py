"""Write docs/reference/config.md, the configuration reference, from conf/ and the declarations in vggtune.schema.

Every task config (conf/<task>.yaml) and every config group (conf/<group>/<option>.yaml) with each key, its
default (from the YAML, which Hydra composes), what it accepts and what it does. A key vggtune reads is declared
in vggtune.schema (src/vggtune/schema/): its declaration says what it accepts and does, and the same words are
in the error for a value it does not accept. A key passed through to Lightning (``trainer.*``, the callbacks'
and loggers' arguments) is documented by the comment lines right above it in conf/ and the comment after its
value. PyYAML (which reads the values) drops comments, so the lines are read here.

    python docs/gen_config_reference.py           # rewrites docs/reference/config.md
    python docs/gen_config_reference.py --check   # exit 1 if the checked-in page is not what this writes

tests/test_docs.py regenerates the page in memory and fails when the checked-in one differs.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vggtune.schema.check import declared
from vggtune.schema.groups import GROUPS
from vggtune.schema.kinds import Key as Declaration

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGE = ROOT / "docs" / "reference" / "config.md"
# A key line: indentation, the key (plain, or quoted), then its value text (empty for a mapping or a list).
KEY_LINE = re.compile(r"^(\s*)(\"[^\"]*\"|'[^']*'|[^\s#:'\"-][^:#]*?)\s*:(?:\s+(.*))?$")
# Keys Hydra reads itself: documented once here instead of beside every group that has them.
HYDRA_KEYS = {"_target_": "what Hydra instantiates", "_partial_": "Hydra makes a partial (the rest comes later)"}


@dataclass
class Key:
    path: tuple[str, ...]
    value: str  # as written in the file
    comment: str
    leaf: bool


@dataclass
class ConfigFile:
    name: str
    description: str
    package: str | None  # "_global_" for `# @package _global_`
    defaults: list = field(default_factory=list)
    keys: dict[tuple[str, ...], Key] = field(default_factory=dict)


def _inline_comment(text: str) -> tuple[str, str]:
    """Split a value text into the value and the comment after it (a ``#`` outside quotes, after a space)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def _lookup(data, path: tuple[str, ...]):
    for part in path:
        data = data[part]
    return data


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def parse(path: Path) -> ConfigFile:
    """The description (the comment block that opens the file), the defaults list, and every key with its
    value as written and its comment."""
    lines = path.read_text(encoding="utf-8").splitlines()
    data = yaml.safe_load("\n".join(lines)) or {}
    package = next((line.split()[-1] for line in lines if line.startswith("# @package")), None)
    config = ConfigFile(path.stem, "", package, data.get("defaults", []))
    pending: list[str] = []  # the comment lines right above the current line
    stack: list[tuple[int, str]] = []
    opening = True  # still in the file's first comment block
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# @package"):
            continue
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        if opening:  # the opening block describes the file, even where a key follows it directly
            config.description, opening, pending = " ".join(pending), False, []
        match = KEY_LINE.match(line) if stripped and not stripped.startswith("- ") else None
        if not match:
            pending = []
            continue
        indent, key, rest = len(match[1]), match[2].strip("\"'"), match[3] or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key_path = (*[k for _, k in stack], key)
        stack.append((indent, key))
        value, after = _inline_comment(rest)
        comment = " ".join([*pending, after]).strip()
        pending = []
        if key_path == ("defaults",):
            continue
        loaded = _lookup(data, key_path)
        leaf = not isinstance(loaded, dict) or not loaded
        if not value and isinstance(loaded, list):
            value = _flow(loaded)
        if key not in HYDRA_KEYS or comment:
            config.keys[key_path] = Key(key_path, value, comment, leaf)
    return config


def _option_files(group: Path) -> dict[str, ConfigFile]:
    """Each option of a group, with the keys of the same group's option it names in its defaults list
    (``defaults: [auto, _self_]`` in trainer/ddp.yaml) filled in."""
    parsed = {path.stem: parse(path) for path in sorted(group.glob("*.yaml"))}
    for option in parsed.values():
        for base in (d for d in option.defaults if isinstance(d, str) and d in parsed and d != "_self_"):
            inherited = {p: k for p, k in parsed[base].keys.items() if p not in option.keys}
            option.keys = {**inherited, **option.keys}
    return parsed


def _text(text: str) -> str:
    """Markdown-safe prose: outside `code`, ``<run>`` and ``**`` would be read as HTML and bold."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def _value(key: Key) -> str:
    if key.value == "???":
        return "`???` (required)"
    return f"`{key.value.replace('|', chr(92) + '|')}`" if key.value else ""


def _defaults_line(defaults: list) -> str:
    items = []
    for entry in defaults:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            name = group.split()[-1].lstrip("/")
            option = "none (optional)" if option is None else f"`{option}`"
            items.append(f"[`{name}`](#group-{name}): {option}" if "/" not in name else f"`{name}`: {option}")
        elif entry != "_self_":
            items.append(f"everything of [`vggtune {entry}`](#task-{entry})")
    return ", ".join(items)


class Page:
    """The page's lines, and the rows that have no comment (``where: key``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.missing: list[str] = []

    def table(self, where: str, rows: list[tuple[str, str, str, str]]) -> None:
        self.lines += ["| key | default | accepts | what it does |", "|---|---|---|---|"]
        for key, value, accepts, comment in rows:
            self.lines.append(f"| `{key}` | {value} | {_text(accepts)} | {_text(comment)} |")
            if not comment and key.rsplit(".", 1)[-1] not in HYDRA_KEYS:
                self.missing.append(f"{where}: {key}")
        self.lines.append("")

    def task(self, config: ConfigFile) -> None:
        self.lines += [f"### `vggtune {config.name}` {{#task-{config.name}}}", "", _text(config.description), ""]
        if config.defaults:
            self.lines += [f"Defaults: {_defaults_line(config.defaults)}.", ""]
        keys = [k for k in config.keys.values() if k.leaf or k.comment]
        own = declared(config.name)
        rows = [(".".join(k.path), _value(k), *_documented(k, own.get(".".join(k.path)))) for k in keys]
        self.table(f"{config.name}.yaml", rows)

    def group(self, group: str, options: dict[str, ConfigFile], default: str | None) -> None:
        how = f"`{group}={default}` unless you choose" if default else f"none unless you choose `{group}=...`"
        self.lines += [f"### `{group}` {{#group-{group}}}", "", f"Files: `conf/{group}/`. Default: {how}.", ""]
        for name, option in options.items():
            overrides = [d for d in option.defaults if isinstance(d, dict)]
            sets = f" Sets {_defaults_line(overrides)}." if overrides else ""
            glob = " (its keys are global: `# @package _global_`)" if option.package == "_global_" else ""
            mark = " (default)" if name == default else ""
            self.lines.append(f"- `{name}`{mark}{glob}: {_text(option.description)}{sets}")
        self.lines.append("")
        self.table(f"{group}/", _group_rows(group, options))


def _documented(key: Key, declaration: Declaration | None) -> tuple[str, str]:
    """What a key accepts and does: from its declaration in vggtune.schema, else (Lightning's) its comment in conf/."""
    if declaration is None:
        return "", key.comment
    return declaration.describe(), declaration.doc


def _group_rows(group: str, options: dict[str, ConfigFile]) -> list[tuple[str, str, str, str]]:
    """One row per key of any option: one value if every option has it alike, else each option's; what it
    accepts and does from its declaration, or the comment of whichever options have one."""
    paths = list(dict.fromkeys(p for option in options.values() for p in option.keys))
    rows = []
    for path in paths:
        keys = {name: option.keys[path] for name, option in options.items() if path in option.keys}
        if not any(k.leaf or k.comment for k in keys.values()):
            continue
        values = {name: _value(k) for name, k in keys.items()}
        if len(keys) == len(options) and len(set(values.values())) == 1:
            value = next(iter(values.values()))
        else:
            value = "<br>".join(f"{name}: {v or '(a mapping)'}" for name, v in values.items())
        comments = {name: k.comment for name, k in keys.items() if k.comment}
        if len(set(comments.values())) <= 1:
            comment = next(iter(comments.values()), "")
        else:
            comment = " ".join(f"{name}: {text}" for name, text in comments.items())
        full = path if options[next(iter(keys))].package == "_global_" else (group, *path)
        name = ".".join(full)
        declaration = GROUPS.get(group, {}).get(".".join(path)) if full != path else declared("train").get(name)
        if declaration is not None:
            rows.append((name, value, declaration.describe(), declaration.doc))
        else:
            rows.append((name, value, "", comment))
    return rows


def build() -> Page:
    """The page, from every file in conf/."""
    tasks = {path.stem: parse(path) for path in sorted(CONF.glob("*.yaml"))}
    groups = {path.name: _option_files(path) for path in sorted(CONF.iterdir()) if any(path.glob("*.yaml"))}
    chosen = {group: option for d in tasks["train"].defaults if isinstance(d, dict) for group, option in d.items()}
    page = Page()
    page.lines += [
        "# Configuration reference",
        "",
        "<!-- Generated from conf/ by docs/gen_config_reference.py: edit the comments in conf/, then run"
        " python docs/gen_config_reference.py -->",
        "",
        "Every key of every command and config group, with its default in `conf/`, and what it accepts and"
        " does from its declaration in `vggtune.schema` (for keys passed through to Lightning: the comment"
        " beside it in `conf/`), from which this page is generated ([Configuration](../configuration.md) says"
        " how groups and overrides work). A value a key does not accept is refused before anything runs, with"
        " the words of its accepts column. Override a key with `key=value`, choose a group's option with `group=option`, and"
        " print what a command would run with `vggtune <command> --cfg job`. `???` marks a key you must give.",
        "",
        "Keys Hydra reads itself: " + "; ".join(f"`{k}`: {v}" for k, v in HYDRA_KEYS.items()) + ".",
        "",
        "## Commands",
        "",
    ]
    for config in tasks.values():
        page.task(config)
    page.lines += ["## Config groups", "", "The groups that `vggtune train` (and `lr_find`) compose.", ""]
    for group, options in groups.items():
        page.group(group, options, chosen.get(f"optional {group}", chosen.get(group)))
    return page


def render() -> str:
    """The page, as text."""
    return "\n".join(build().lines).rstrip() + "\n"


def missing_comments() -> list[str]:
    """Every row of the page whose key has no comment, as ``task.yaml: key`` or ``group/: key``."""
    return build().missing


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python docs/gen_config_reference.py")
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
