"""``vggtune summary``: layers, parameter counts (trainable under a finetune schedule), activation memory.

The per-layer table and the totals come from torchinfo, which runs one forward pass on a
random image and records every layer's output shape and parameters. Nothing is downloaded:
the counts do not depend on the weights, so the network is built from random init.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import cast

import torchinfo
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.model.arch import layer_groups, preprocessing
from vggtune.model.finetune import Schedule, apply_schedule
from vggtune.model.module import VGGClassifier
from vggtune.tasks.runs import report_files, write_json
from vggtune.tasks.train import resolve_recipe

log = logging.getLogger(__name__)

MB = 1e6  # torchinfo reports decimal megabytes; so do we, so that the numbers agree


def summarize(
    arch: str, num_classes: int = 1000, image_size: int | None = None, finetune: dict | None = None, head: str = "vgg"
) -> tuple[str, dict]:
    """The summary of ``arch`` as printable text and as plain numbers (what ``summary.json`` holds).

    Trainable and frozen counts are those of epoch 0 of the finetune schedule, set by the same
    :func:`~vggtune.model.finetune.apply_schedule` that training uses.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"model.num_classes must be a whole number of at least 1, got {num_classes!r}")
    size = preprocessing(arch, image_size).image_size
    schedule = Schedule(**(finetune or {}))
    module = VGGClassifier(
        arch, [f"class{i}" for i in range(num_classes)], weights="none", finetune=schedule.to_dict(), head=head
    )
    apply_schedule(module, schedule, 0)
    stats = torchinfo.summary(
        module.model,
        input_size=(1, 3, size, size),
        device="cpu",
        verbose=0,
        depth=2,
        col_names=("output_size", "num_params", "trainable"),
        row_settings=("var_names",),
        mode="eval",
    )
    groups = {
        name: {
            "params": sum(p.numel() for p in m.parameters()),
            "trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad),
        }
        for name, m in layer_groups(module.model).items()
    }
    numbers = {
        "arch": arch,
        "num_classes": num_classes,
        "image_size": size,
        "finetune": schedule.name,
        "total_params": stats.total_params,
        "trainable_params": stats.trainable_params,
        "frozen_params": stats.total_params - stats.trainable_params,
        "groups": groups,
        "activation_bytes_per_image": activation_bytes(stats, size),
        "param_bytes": stats.total_param_bytes,
        "mult_adds_per_image": stats.total_mult_adds,
    }
    # torchinfo 1.8 prints its unit enum as "(Units.GIGABYTES)" on current Pythons; show "(G)".
    table = re.sub(r"\(Units\.([A-Z])[A-Z]*\)", r"(\1)", str(stats))
    return f"{table}\n{_describe(numbers, schedule)}", numbers


def activation_bytes(stats: torchinfo.ModelStatistics, image_size: int) -> int:
    """Bytes of the float32 tensors one forward pass of one image produces: the input and every layer's output.

    In-place layers (VGG's ReLUs overwrite their conv's output) and Dropout (the identity at
    inference) produce no new tensor, so they add nothing.
    """
    new = [
        layer
        for layer in stats.summary_list
        if layer.is_leaf_layer
        and not getattr(layer.module, "inplace", False)
        and not isinstance(layer.module, nn.Dropout)
    ]
    # Not torchinfo's total_input: it adds the Python object's overhead (sys.getsizeof).
    return 3 * image_size * image_size * 4 + sum(layer.output_bytes for layer in new)


def _describe(n: dict, schedule: Schedule) -> str:
    trainable0 = schedule.trainable_groups(0)
    frozen0 = [g for g in n["groups"] if g not in trainable0]
    lines = [
        f"{n['arch']} on {n['image_size']}x{n['image_size']} px images, {n['num_classes']} outputs, "
        f"finetune={schedule.name}",
        f"Parameters: {n['total_params']:,}",
        f"  trainable at epoch 0: {n['trainable_params']:>13,}  ({', '.join(trainable0)})",
        f"  frozen at epoch 0:    {n['frozen_params']:>13,}  ({', '.join(frozen0) or 'nothing'})",
    ]
    later = schedule.last_change_epoch()
    if later > 0:
        then = schedule.trainable_groups(later)
        lines.append(
            f"  from epoch {later}: "
            + ("everything trains" if then == tuple(n["groups"]) else f"training {', '.join(then)}")
        )
    lines.append("Layer groups (top of the network first):")
    for name, g in n["groups"].items():
        state = (
            "trainable"
            if g["trainable_params"] == g["params"]
            else "frozen"
            if g["trainable_params"] == 0
            else f"{g['trainable_params']:,} trainable"
        )
        lines.append(f"  {name:<7} {g['params']:>13,}  {state}")
    values = n["activation_bytes_per_image"] / 4
    lines += [
        f"Forward activations per image: {n['activation_bytes_per_image'] / MB:.1f} MB "
        f"({values / 1e6:.1f} M float32 values: the input and every layer's output; the in-place ReLUs "
        "add none)",
        '  (torchinfo\'s "Forward/backward pass size" above is another estimate: twice the outputs of '
        "the conv and linear layers, for their gradients)",
        f"Weights: {n['param_bytes'] / MB:.1f} MB (float32)",
    ]
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    """The ``vggtune summary`` task: print the summary and write it to the run folder."""
    resolve_recipe(cfg)  # as train does: e.g. the pooled head's hidden layer always trains
    finetune = cast(dict, OmegaConf.to_container(cfg.finetune, resolve=True))  # of a DictConfig
    text, numbers = summarize(
        cfg.model.arch, cfg.model.num_classes, cfg.data.image_size, finetune, str(cfg.model.get("head", "vgg"))
    )
    run_dir = Path(cfg.paths.run_dir)
    with atomic_open(run_dir / "summary.txt", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    write_json(run_dir / "summary.json", numbers)
    log.info(text)
    report_files(run_dir, {"summary.txt": "the table and totals above", "summary.json": "the totals as numbers"})
    return numbers
