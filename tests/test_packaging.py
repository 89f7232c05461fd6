"""The built wheel holds every config, and the command runs from it outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_config_group_is_a_listed_package():
    # setuptools ships a data-only folder only when it is listed (else it warns and, soon, drops it).
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    groups = {f"vggtune.conf.{p.name}" for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "__pycache__"}
    src = ROOT / "src"
    subpackages = {".".join(p.parent.relative_to(src).parts) for p in (src / "vggtune").rglob("__init__.py")}
    assert groups | subpackages <= listed, sorted((groups | subpackages) - listed)


@pytest.mark.slow
def test_the_wheel_builds_quietly_and_its_command_composes_a_config_outside_the_repo(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy of what git would ship: an in-tree build/ left by an earlier build would put
    # modules that no longer exist into the wheel (setuptools never cleans build/lib).
    source = tmp_path / "source"
    for part in ("src", "conf", "pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (ROOT / part).is_file():
            shutil.copy2(ROOT / part, source / part)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "SetuptoolsDeprecationWarning" not in build.stdout + build.stderr
    assert "is absent from the `packages` configuration" not in build.stdout + build.stderr
    (wheel,) = wheels.glob("vggtune-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("vggtune/conf/")}
    for config in ROOT.joinpath("conf").rglob("*.yaml"):
        assert f"vggtune/conf/{config.relative_to(ROOT / 'conf').as_posix()}" in shipped, config
    shipped_code = {
        n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py") and not n.startswith("vggtune/conf/")
    }
    ours = {p.relative_to(ROOT / "src").as_posix() for p in ROOT.joinpath("src", "vggtune").rglob("*.py")}
    assert shipped_code == ours, sorted(shipped_code ^ ours)  # every module, and no module that is gone

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        "import sys, vggtune; from vggtune import cli; print('FROM', vggtune.__file__); "
        "cli.main(['train', '--cfg', 'job', 'model=vgg19', 'experiment=demo'])"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"FROM {target}" in proc.stdout  # the installed wheel, not the checkout
    assert "arch: vgg19" in proc.stdout and "max_epochs: 5" in proc.stdout  # a group and an experiment
    assert not (elsewhere / "outputs").exists()
