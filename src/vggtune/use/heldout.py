"""Images a deployed format is judged on, loaded once as the exported file takes them (float RGB in [0, 1]),
and the scores of a format's probabilities against the labels and against the fp32 model.

Every format is given the very same tensors, so what differs between two formats' scores is the
format, not the decoding; and a format's speed is measured on the model alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vggtune.core.errors import UserError
from vggtune.data.transforms import unit_transform
from vggtune.use.evaluation import compute_metrics, compute_multilabel_metrics, images_from_folder, images_from_run
from vggtune.use.inference import LoadedModel, find_images, image_batches

Probabilities = Callable[[torch.Tensor], torch.Tensor]  # a batch in [0, 1] -> (batch, classes) probabilities


@dataclass
class HeldOut:
    """Labelled images, decoded and prepared: (N, 3, size, size) float32 in [0, 1]."""

    images: torch.Tensor
    targets: list  # a class index per image; multi-label: a tuple of label indices
    source: str
    left_out: dict[str, str]  # unreadable file -> why


def held_out(model: LoadedModel, root: str | None, subset: str) -> HeldOut:
    """The ``subset`` images of the checkpoint's run (``root`` null), or the class folders in ``root``."""
    data = (
        images_from_run(model.path, model.class_names, subset, model.label_delim)
        if root is None
        else images_from_folder(root, model.class_names, model.multilabel)
    )
    if not data.items:
        raise UserError(
            f"{data.source} holds no image of the checkpoint's classes: pass data.root=<a folder of "
            "class folders> with images of them"
        )
    images, kept, left_out = _load([p for p, _ in data.items], model)
    if not kept:
        raise UserError(f"none of the {len(data.items)} images of {data.source} could be read")
    return HeldOut(images, [data.items[i][1] for i in kept], data.source, left_out)


def calibration_batches(
    model: LoadedModel, root: str | None, count: int, batch_size: int = 16, seed: int = 0
) -> tuple[list[np.ndarray], str, list[Path]]:
    """Up to ``count`` training images (a seeded sample), prepared as the exported file takes them, in batches:
    the run's train split (``root`` null) or any images under ``root``. Returns (batches, source, paths)."""
    if root is None:
        data = images_from_run(model.path, model.class_names, "train", model.label_delim)
        paths, source = [p for p, _ in data.items], data.source
    else:
        paths, source = find_images(root), f"the images in {root}"
    if not paths:
        raise UserError(f"{source} holds no image to calibrate on: pass calibration_root=<a folder of training images>")
    paths = sorted(paths)
    random.Random(seed).shuffle(paths)
    paths = paths[:count]
    images, kept, _ = _load(paths, model)
    if not kept:
        raise UserError(
            f"none of the {len(paths)} calibration images of {source} could be read: pass "
            "calibration_root=<a folder of training images>"
        )
    batches = [images[i : i + batch_size].numpy() for i in range(0, len(images), batch_size)]
    return batches, source, [paths[i] for i in kept]


def _load(paths: list[Path], model: LoadedModel) -> tuple[torch.Tensor, list[int], dict[str, str]]:
    chunks, kept, left_out = [], [], {}
    for x, idx, bad in image_batches(paths, unit_transform(model.preprocessing), batch_size=64):
        left_out.update({str(paths[i]): why for i, why in bad})
        if x is not None:
            chunks.append(x)
            kept += idx
    size = model.preprocessing.image_size
    return (torch.cat(chunks) if chunks else torch.empty(0, 3, size, size)), kept, left_out


def in_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``images`` in consecutive batches of ``batch_size`` (the last may be smaller)."""
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


def probabilities(run: Probabilities, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``run`` over every image, in batches: (N, classes) float32."""
    return torch.cat([run(x).float() for x in in_batches(images, batch_size)])


def scores(probs: torch.Tensor, data: HeldOut, names: list[str], thresholds: list[float] | None) -> dict:
    """Accuracy and macro F1 (multi-label: subset accuracy, macro F1 at the thresholds, and mAP)."""
    if thresholds is None:
        m = compute_metrics(probs, torch.tensor(data.targets), names).metrics
        return {"acc": m["acc"], "f1": m["f1"]}
    hot = torch.zeros(len(data.targets), len(names), dtype=torch.long)
    for row, labels in enumerate(data.targets):
        hot[row, list(labels)] = 1
    m = compute_multilabel_metrics(probs, hot, names, thresholds).metrics
    return {"acc": m["acc"], "f1": m["f1"], "map": m["map"]}


def decisions(probs: torch.Tensor, thresholds: list[float] | None) -> torch.Tensor:
    """What the model answers per image: its class (N,), or multi-label its (N, labels) 0/1 decisions."""
    if thresholds is None:
        return probs.argmax(dim=1)
    return (probs >= torch.tensor(thresholds)).long()


def compare(
    reference: torch.Tensor, candidate: torch.Tensor, data: HeldOut, names: list[str], thresholds: list[float] | None
) -> dict:
    """``candidate``'s probabilities beside the fp32 ``reference`` on the same images: how often they answer the
    same, each one's scores, and the candidate's loss in accuracy points."""
    ref, got = decisions(reference, thresholds), decisions(candidate, thresholds)
    same = (ref == got) if thresholds is None else (ref == got).all(dim=1)
    before, after = scores(reference, data, names, thresholds), scores(candidate, data, names, thresholds)
    return {
        "images": len(data.targets),
        "source": data.source,
        "agreement": float(same.float().mean()),
        "fp32": before,
        "quantized": after,
        "accuracy_drop_points": round(100 * (before["acc"] - after["acc"]), 4),
        "max_abs_diff": float((reference - candidate).abs().max()),
    }
