"""A VGG with its weights: torchvision's ImageNet file (from the hub cache, or downloaded once), a
state-dict file, or random init; and reading vggtune checkpoints. Files are read with
``weights_only=True``: nothing in them runs. No Lightning here: the command line's checks use this
module before Hydra has set up logging (see tests/test_layout.py).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import VGG

from vggtune.core.errors import UserError
from vggtune.core.proxies import proxies_as_now
from vggtune.model.arch import (
    ConcatPool,
    check_arch,
    check_head,
    guess_arch,
    imagenet_weights,
    pooled_classifier,
    reset_classifier,
)


def build_vgg(arch: str, num_classes: int, weights: str = "imagenet", dropout: float = 0.5, head: str = "vgg") -> VGG:
    """torchvision's VGG with pretrained weights loaded and a head for ``num_classes``.

    ``weights`` is ``imagenet`` (torchvision's weights API and cache), ``none`` (random
    init) or the path of a state-dict file in torchvision's key layout. ``head="vgg"`` keeps the
    pretrained fc6/fc7 and replaces the last linear layer; ``head="pooled"`` replaces the average
    pool and the whole classifier with :func:`pooled_classifier` (the conv layers stay pretrained).
    """
    # torchvision refuses weights together with num_classes != 1000: build the ImageNet shape,
    # load, then swap the head.
    pooled = check_head(head) == "pooled"
    model = _imagenet_shaped(check_arch(arch), dropout, pooled)
    load_weights(model, arch, weights, convs_only=pooled)
    if pooled:
        model.avgpool = ConcatPool()
        model.classifier = pooled_classifier(num_classes, dropout)
    else:
        reset_classifier(model, num_classes)
    return model


def _imagenet_shaped(arch: str, dropout: float, pooled: bool) -> nn.Module:
    """torchvision's VGG; for the pooled head, without drawing the fc6/fc7/fc8 weights that it replaces:
    those are 120M of vgg16's 138M parameters, and drawing them was most of the seconds before a run's
    first step on a CPU. Their layers stay on the meta device (shapes only) until the head replaces them."""
    if not pooled:
        return torchvision.models.get_model(arch, weights=None, dropout=dropout)
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None, dropout=dropout)
    model.features = model.features.to_empty(device="cpu")
    for m in model.features.modules():  # torchvision's own VGG init (torchvision/models/vgg.py, VGG.__init__)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:  # VGG's convs all have one
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # weight 1, bias 0, and the running statistics to_empty left unset
    return model


def load_weights(
    model: VGG, arch: str, weights: str = "imagenet", head: bool = False, convs_only: bool = False
) -> None:
    """Load ``weights`` (``imagenet``, ``none`` or a state-dict file) into an ImageNet-shaped VGG.

    Everything but the head is loaded; ``head=True`` loads the 1000-class ImageNet head too, for
    using the pretrained network as it was trained (its predictions are ImageNet categories).
    ``convs_only=True`` loads the conv layers alone (``features.*``), for the pooled head, which
    replaces fc6 and fc7: a file that holds only those (a backbone) is then enough.
    """
    source = str(weights)
    if source.lower() == "none":
        return
    if source.lower() == "imagenet":
        state, source = _imagenet_state_dict(arch), "torchvision's ImageNet weights"
    else:
        state = load_state_dict_file(Path(source).expanduser())
    _load_backbone(model, arch, state, source, convs_only)
    if head:
        head_state = {k.removeprefix("classifier.6."): v for k, v in state.items() if k.startswith("classifier.6.")}
        if head_state.keys() != {"weight", "bias"} or head_state["weight"].shape != model.classifier[6].weight.shape:
            raise UserError(
                f"weights {source} have no 1000-class ImageNet head: for a checkpoint written by "
                "`vggtune train` pass ckpt=<file> instead of model.weights"
            )
        model.classifier[6].load_state_dict(head_state)


def _imagenet_state_dict(arch: str) -> dict:
    weights = imagenet_weights(arch)
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return load_state_dict_file(cached)
    try:
        # torch.hub defaults to weights_only=False; a weights file never needs to run code.
        with proxies_as_now():
            return torch.hub.load_state_dict_from_url(
                weights.url, map_location="cpu", progress=True, check_hash=True, weights_only=True
            )
    except (OSError, RuntimeError) as e:
        reason = str(getattr(e, "reason", e)).strip() or type(e).__name__
        raise UserError(
            f"could not get the ImageNet weights for {arch}: {filename} is not in {cached.parent} "
            f"(torch hub dir; set TORCH_HOME to move it) and the download failed ({reason}). "
            f"Copy the file there, or pass model.weights=/path/to/{filename}, "
            f"or start from random init with model.weights=none"
        ) from None


def load_state_dict_file(path: Path) -> dict:
    """Load a state dict safely (``weights_only=True``); a Lightning/vggtune checkpoint also works."""
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist: pass model.weights=<an existing .pth file>, "
            "model.weights=imagenet or model.weights=none"
        )
    obj = safe_load(path, "weights file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return {_strip_prefixes(k): v for k, v in obj.items()}


def _strip_prefixes(key: str) -> str:
    # vggtune checkpoints prefix "model."; torch.compile adds "_orig_mod." (lightning #17415).
    for prefix in ("model.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key.replace("._orig_mod.", ".")


def _load_backbone(model: nn.Module, arch: str, state: dict, source: str, convs_only: bool = False) -> None:
    """Load everything but the head, which is replaced anyway and may have another class count."""
    keep = (lambda k: k.startswith("features.")) if convs_only else (lambda k: not k.startswith("classifier.6."))
    state = {k: v for k, v in state.items() if keep(k)}
    expected = {k: v for k, v in model.state_dict().items() if keep(k)}
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if state.keys() != expected.keys() or wrong:
        guess = guess_arch(state)
        if guess and guess != arch:
            hint = f"it looks like {guess} weights: pass model={guess}"
        elif not wrong and state.keys() < expected.keys() and all(k.startswith("features.") for k in state):
            hint = "it holds the conv layers only, which model.head=pooled needs (model.head=vgg needs fc6 and fc7)"
        else:
            hint = "pass weights saved from the same architecture"
        raise UserError(f"weights {source} do not fit {arch}: {hint}")
    model.load_state_dict(state, strict=False)


def safe_load(path: Path, what: str, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a UserError saying what is wrong with ``what`` at ``path``.

    Nothing in the file is executed: a pickle that would build arbitrary objects is refused.
    ``mmap=True`` maps the tensors instead of reading them (a look at a 1.5 GB file costs nothing).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if m:
            raise UserError(
                f"refused to load {what} {path}: its pickle would run code ({m.group(1)}); vggtune "
                "never executes code from a file: save plain tensors and containers instead"
            ) from None
        raise UserError(f"{path} is not a PyTorch {what} (unreadable pickle)") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive raises several types
        raise UserError(
            f"could not read {what} {path} ({type(e).__name__}: {str(e)[:120]}); is the file complete?"
        ) from None


def read_checkpoint(
    path: str | os.PathLike,
    key: str = "ckpt",
    fix: str = "pass ckpt=<run folder>/checkpoints/best.ckpt",
    mmap: bool = True,
) -> dict:
    """A vggtune checkpoint loaded with ``weights_only=True``, or a UserError naming ``key`` and the fix.

    Nothing in the file is executed: a pickle that would build arbitrary objects is refused.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserError(f"{key} {path} does not exist: {fix}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{key} {path} is not a PyTorch checkpoint (not a torch.save archive): {fix}")
    ckpt = safe_load(path, "checkpoint", mmap=mmap)
    if not isinstance(ckpt, dict) or "vggtune" not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"{key} {path} is not a vggtune checkpoint (no vggtune marker): {fix} (a checkpoint "
            "written by `vggtune train`)"
        )
    return ckpt
