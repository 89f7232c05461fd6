"""The command lines of the README and the docs pages, copied from their code blocks at test time, run as a user
would type them.

Placeholders are the only thing replaced: ``~`` is a home folder made here (with ``pictures/flowers``
and the other folders and files the examples name), ``DIR`` is that flowers folder, and ``...`` or
``outputs/train/<run>/checkpoints/best.ckpt`` is a checkpoint trained here first. ``train`` and
``lr_find`` lines end with ``--cfg job`` (they would fine-tune ImageNet weights, which no test
downloads), and so do ``serve`` lines (a server runs until stopped; tests/test_serve.py runs one) and
a sweep's first job (``-m`` and all but the first value of each list dropped): every key and group
they name must exist and take the value given. ``embed``, ``summary`` and ``audit`` without a checkpoint get
``model.weights=none`` (ImageNet weights again). ``eval``, ``predict``, ``export``, ``prepare``,
``embed``, ``explain``, ``summary`` and ``audit`` lines run for real, and ``--help`` as it is.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import TINY, make_class_folders, run_cli_here
from omegaconf import OmegaConf

from vggtune.use.quantize import has_bf16

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = sorted((README.parent / "docs").rglob("*.md"))  # the documentation pages: their commands too


def readme_commands() -> list[str]:
    """Every line of a code block that starts with ``vggtune`` in the README and the docs pages (docs/**/*.md),
    without its trailing comment, each once."""
    # Every fence is paired with the next one, whatever its language, and only shell blocks are kept.
    text = "\n".join(page.read_text(encoding="utf-8") for page in [README, *DOCS])
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    lines = [
        line.strip() for lang, block in blocks if lang in ("", "bash", "sh", "console") for line in block.splitlines()
    ]
    commands = [re.sub(r"\s+#.*$", "", line) for line in lines if line.startswith("vggtune ")]
    return list(dict.fromkeys(commands))  # a command the README and a page both show runs once


COMMANDS = readme_commands()


def test_the_readme_has_the_examples_this_file_runs():
    tasks = {shlex.split(c)[1] for c in COMMANDS}
    assert {"train", "lr_find", "eval", "predict", "export"} <= tasks, COMMANDS


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    make_class_folders(home / "pictures" / "flowers", classes=3, per_class=6)
    make_class_folders(home / "pictures" / "new_labelled_batch", classes=3, per_class=2, seed=1)
    unsorted = make_class_folders(home / "pictures" / "unsorted_tmp", classes=2, per_class=2, seed=2)
    (home / "pictures" / "unsorted").mkdir()
    shutil.copy(sorted((home / "pictures" / "flowers").rglob("*.jpg"))[0], home / "pictures" / "rose_01.jpg")
    for image in unsorted.rglob("*.*"):
        image.rename(home / "pictures" / "unsorted" / f"{image.parent.name}_{image.name}")
    return home


@pytest.fixture(scope="module")
def checkpoint(home) -> Path:
    proc = run_cli_here(
        "train",
        f"data.root={home / 'pictures' / 'flowers'}",
        *TINY,
        "data.batch_size=4",
        "hydra.run.dir=run",
        cwd=home,
        env={"HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home / "run" / "checkpoints" / "best.ckpt"


def _same(got, typed: str) -> bool:
    try:
        return float(got) == float(typed)
    except (TypeError, ValueError):
        return str(got) == typed


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_works_as_written(command, home, checkpoint, tmp_path):
    args = shlex.split(command)[1:]
    if "bf16" in command and args[0] in ("export", "benchmark") and not has_bf16():
        pytest.skip("bf16 needs a CPU with avx512_bf16 or amx_bf16 (the refusal is tests/test_quantize.py's)")
    args = [
        a.replace("outputs/train/<run>/checkpoints/best.ckpt", str(checkpoint))
        .replace("ckpt=...", f"ckpt={checkpoint}")
        .replace("=DIR", f"={home / 'pictures' / 'flowers'}")
        for a in args
    ]
    task = args[0]
    if "-m" in args:  # a sweep: its first job's config (the sweeps themselves run in tests/test_sweep.py)
        args = [a.split(",")[0] if "=" in a else a for a in args if a != "-m"]
    if task in ("train", "lr_find", "serve") and not {"--cfg", "--help"} & set(args):
        args += ["--cfg", "job"]
    if task in ("embed", "summary", "audit") and not any(a.startswith("ckpt=") for a in args):
        args += ["model.weights=none"]  # torchvision's ImageNet weights: a download, which no test makes
    proc = run_cli_here(*args, cwd=tmp_path, env={"HOME": str(home)})
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])
    if "--cfg" in args and "job" in args:
        composed = OmegaConf.create(proc.stdout)
        for override in args[1:]:
            key, _, value = override.partition("=")
            if "." in key and value:  # each key.path=value is in the composed config, ~ expanded
                assert _same(OmegaConf.select(composed, key), value.replace("~", str(home), 1)), override
    if task == "predict":
        written = sorted(tmp_path.rglob("predictions.csv"))  # output=..., or the run folder's
        rows = written[0].read_text().splitlines()
        assert len(rows) == 1 + 4  # a header and one row per image in ~/pictures/unsorted
    if task == "export" and "output=model.onnx" in args:
        assert (tmp_path / "model.onnx").stat().st_size > 0
