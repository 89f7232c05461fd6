"""``backend=auto`` and ``precision=``: which format ``vggtune serve`` runs, decided before anything starts.

``auto`` serves what ``vggtune benchmark ckpt=...`` found fastest within its accuracy tolerance, as
recorded beside the checkpoint: the checkpoint itself (fp32 or bf16) or one of the files the
benchmark exported. A benchmark of an earlier version of the checkpoint is refused, not trusted.
"""

from __future__ import annotations

import json
from pathlib import Path

from vggtune.core.errors import UserError
from vggtune.serve.backends import file_version
from vggtune.use.benchmark import benchmark_file
from vggtune.use.quantize import BF16_FLAGS, cpu_name, has_bf16

BACKENDS = (None, "auto")
PRECISIONS = ("fp32", "bf16")


def choose(settings: dict) -> None:
    """Check ``backend`` and ``precision`` in ``settings`` and, for ``auto``, set what to serve in their place:
    ``ckpt``/``model``, ``precision`` and ``chosen`` (what the benchmark said, for ``/info``)."""
    backend, precision = settings["backend"], settings["precision"]
    if backend not in BACKENDS:
        raise UserError(
            f"backend must be auto (the fastest format `vggtune benchmark` found) or left out "
            f"(what ckpt= or model= names), got {backend!r}"
        )
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "auto":
        if precision != "fp32":
            raise UserError("backend=auto chooses the precision too (from the benchmark): leave precision out")
        _from_benchmark(settings)
    if settings["precision"] == "bf16" and settings["device"] == "cpu" and not has_bf16():
        raise UserError(
            f"precision=bf16 needs a CPU with bf16 instructions ({' or '.join(BF16_FLAGS)}), and this "
            f"one ({cpu_name()}) has none: it would be slower than fp32; serve an int8 file instead "
            "(vggtune export quantize=int8)"
        )


def _from_benchmark(settings: dict) -> None:
    if not settings["ckpt"]:
        raise UserError("backend=auto chooses among the formats of a checkpoint: pass ckpt=<run>/checkpoints/best.ckpt")
    ckpt = Path(str(settings["ckpt"])).expanduser()
    record = benchmark_file(ckpt)
    if not record.is_file():
        raise UserError(
            f"backend=auto serves what `vggtune benchmark ckpt={ckpt}` finds fastest, and it has not run "
            f"for this checkpoint ({record.name} not beside it): run it first, or leave backend out"
        )
    result = json.loads(record.read_text(encoding="utf-8"))
    if result.get("checkpoint_version") != file_version(ckpt):
        raise UserError(
            f"{record} is the benchmark of an earlier version of {ckpt.name} (it has changed since): run "
            f"`vggtune benchmark ckpt={ckpt}` again"
        )
    best = result.get("recommended")
    if not best:
        raise UserError(
            f"in {record}, no format was within max_accuracy_drop={result.get('max_accuracy_drop')} "
            "points of fp32: serve the checkpoint without backend=auto"
        )
    fmt = best["format"]
    if fmt.startswith("eager"):
        settings["precision"] = "bf16" if fmt == "eager_bf16" else "fp32"
    else:
        file = Path(best["file"])
        if not file.is_file():
            raise UserError(f"the benchmark's {fmt} file {file} is gone: run `vggtune benchmark ckpt={ckpt}` again")
        settings["ckpt"], settings["model"] = None, str(file)
    settings["chosen"] = {
        "by": str(record),
        "format": fmt,
        "images_per_s": best["images_per_s"],
        "accuracy_drop_points": best["accuracy_drop_points"],
        "cpu": result.get("cpu"),
    }
