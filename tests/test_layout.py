"""The package's layout stays what its docstrings say: no import circles, lower layers never import
higher ones, every ``_target_`` in conf/ resolves, and no module grows past ~400 lines
(as `ruff format` lays it out: about 300 lines of the compact style the code was written in)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

SRC = Path(__file__).resolve().parents[1] / "src"
CONF = Path(__file__).resolve().parents[1] / "conf"
# A subpackage may import from its own layer's package and from lower layers only. training, use and
# inspect share a layer and do not import each other. The root package (``vggtune``: its version)
# may be imported from anywhere; the command line (cli, preflight, __main__) and the Python API (api,
# api_hydra, api_inputs) sit on top. The root's ``vggtune.train`` and ``vggtune.load`` are the API's,
# imported on first use by its module ``__getattr__`` (PEP 562): not an import of the root's, since
# importing the root does not run it (test_the_root_package_loads_the_api_only_when_asked).
LAYERS = {
    "core": 0,
    "schema": 1,
    "model": 2,
    "data": 3,
    "training": 4,
    "use": 4,
    "inspect": 4,
    "serve": 5,
    "tasks": 6,
    "": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "vggtune").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every vggtune module ``path`` imports, at the top or inside a function (a lazy import is still one)."""
    out = set()
    for node in ast.walk(_without_lazy_attributes(ast.parse(path.read_text()))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vggtune")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vggtune"):
            for alias in node.names:  # `from vggtune.use import export` imports the module vggtune.use.export
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
    return out


def _without_lazy_attributes(tree: ast.Module) -> ast.Module:
    """The module without its module-level ``__getattr__`` (PEP 562), which runs only when an attribute is asked for."""
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    return tree


def _lazy_imports(path: Path) -> set[str]:
    """What the module-level ``__getattr__`` of ``path`` imports."""
    lazy = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    found = set()
    for node in (n for f in lazy for n in ast.walk(f)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) & modules.keys() for name, path in modules.items()}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""  # vggtune.cli, vggtune.preflight: the top


def test_the_import_graph_has_no_circle():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, deps in _graph().items():
        if module in ("vggtune", "vggtune.__main__"):
            continue
        here = _subpackage(module)
        for dep in deps:
            there = _subpackage(dep)
            if dep == "vggtune" or there == here:
                continue
            if there not in LAYERS or here not in LAYERS:
                wrong.append(f"{module} -> {dep}: {there or here} is not a known layer of the layout")
            elif LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} ({here or 'top'}) imports {dep} ({there or 'top'})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_root_package_imports_nothing_so_that_anything_may_import_it():
    assert _graph()["vggtune"] == set()


def test_the_root_package_loads_the_api_only_when_asked():
    """``vggtune.train`` and ``vggtune.load`` come from vggtune.api through the root's ``__getattr__``, its only
    lazy import; importing vggtune loads none of vggtune's modules, nor torch, Hydra or Lightning."""
    import subprocess
    import sys

    assert _lazy_imports(SRC / "vggtune" / "__init__.py") == {"vggtune.api"}
    code = """
import sys
import vggtune
heavy = ("torch", "hydra", "omegaconf", "lightning", "PIL")
print(sorted(m for m in sys.modules if m.startswith("vggtune.") or m.split(".")[0] in heavy))
import vggtune.api
print(vggtune.train is vggtune.api.train, vggtune.load is vggtune.api.load, "train" in dir(vggtune))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[]", "True True True"], (out.stdout, out.stderr[-2000:])


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for init in (SRC / "vggtune").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, init


def test_no_module_grows_past_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p in (SRC / "vggtune").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def _targets(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def test_every_target_in_the_configs_resolves():
    targets = {t for config in CONF.rglob("*.yaml") for t in _targets(yaml.safe_load(config.read_text()) or {})}
    ours = {t for t in targets if isinstance(t, str) and t.startswith("vggtune.")}
    assert len(ours) >= 5, ours  # the data modules, schedulers, progress bar and sweep summary
    for target in sorted(targets):
        assert callable(get_object(target)), target


def test_a_checkpoint_written_before_the_layout_change_loads_with_its_scheduler_found(tmp_path):
    """Checkpoints of 0.1 name their scheduler ``vggtune.schedulers.*``; that module is now in vggtune.model."""
    import torch

    from vggtune.model.checkpoint import model_from_checkpoint
    from vggtune.model.module import VGGClassifier

    model = VGGClassifier("vgg11", ["a", "b"], weights="none")
    hparams = dict(model.hparams)
    hparams["scheduler"] = {"_target_": "vggtune.schedulers.warmup_cosine", "_partial_": True}
    path = tmp_path / "old.ckpt"
    torch.save(
        {"vggtune": {"format": 1, "version": "0.1.0"}, "state_dict": model.state_dict(), "hyper_parameters": hparams},
        path,
    )
    loaded = model_from_checkpoint(path)
    target = loaded.hparams.scheduler["_target_"]
    assert target == "vggtune.model.schedulers.warmup_cosine"
    assert callable(get_object(target))
    path.unlink()


@pytest.mark.slow
def test_the_command_line_checks_do_not_import_lightning():
    """Lightning gives its loggers handlers of their own (and stops them propagating) when it is
    imported before logging is configured: imported by the checks that run before Hydra sets up the
    run's log, its messages (the freeze schedule's "Epoch 1: training ...") would miss train.log."""
    import subprocess
    import sys

    # Importing the command line imports no Lightning; and a missing checkpoint, or one that cannot be
    # resumed, is reported before anything does (importing it costs seconds): the checks run before the task.
    code = """
import sys
from hydra.core.global_hydra import GlobalHydra
import vggtune.cli, vggtune.preflight
from vggtune import cli
print("IMPORTED", sorted(m for m in sys.modules if m.startswith("lightning")))
for args in (["eval", "ckpt=/nowhere/best.ckpt"], ["train", "data.root=/tmp", "ckpt_path=/etc/hostname"]):
    try:
        cli.main(args)
    except SystemExit as e:
        print("EXIT", e.code, sorted(m for m in sys.modules if m.startswith("lightning")))
    GlobalHydra.instance().clear()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["IMPORTED []", "EXIT 2 []", "EXIT 2 []"], (out.stdout, out.stderr[-2000:])
    assert out.stderr.count("error: ckpt") == 2, out.stderr


def test_printing_the_config_imports_no_torch():
    """``vggtune train --cfg job`` (and Hydra's --help) compose and print: importing torch and torchvision
    for the checks it never runs cost seconds (issue 28)."""
    import subprocess
    import sys

    code = """
import contextlib, io, sys
from vggtune import cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    cli.main(["train", "data.root=/tmp", "--cfg", "job"])
print("PRINTED", "trainer:" in out.getvalue(), sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PRINTED True []", (out.stdout, out.stderr[-2000:])
