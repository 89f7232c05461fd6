"""What each VGG architecture knows about itself: builder, weights, layer groups, preprocessing.

Everything architecture-specific lives here (as timm keeps ``pretrained_cfg`` beside each
builder), so the LightningModule, the freeze schedules and the tasks never index into
``features`` or ``classifier`` themselves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torchvision
from torch import nn
from torchvision.models import VGG

from vggtune.core.errors import UserError
from vggtune.schema.check import check_value
from vggtune.schema.groups import ARCHS

# Layer groups from the top of the network down; a group's index is its depth, which sets its
# learning rate (base * lr_decay ** depth) and the order in which gradual unfreezing reaches it.
GROUPS = ("head", "fc", "block5", "block4", "block3", "block2", "block1")
BLOCKS = ("block1", "block2", "block3", "block4", "block5")  # the conv blocks, input side first

_CONV_LAYERS = {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}


def check_arch(arch: str) -> str:
    """Return ``arch`` if it names a supported VGG, else raise a UserError listing the valid ones."""
    if arch not in ARCHS:
        raise UserError(f"unknown model '{arch}': choose one of {', '.join(ARCHS)} (model=vgg16)")
    return arch


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's IMAGENET1K_V1 weights entry for ``arch``."""
    return torchvision.models.get_model_weights(check_arch(arch)).IMAGENET1K_V1


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for the network: resize, centre crop, normalise."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        """Plain values, safe to store in a checkpoint loaded with ``weights_only=True``."""
        d = asdict(self)
        return {**d, "mean": list(d["mean"]), "std": list(d["std"])}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["image_size"]), int(d["resize_size"]), tuple(d["mean"]), tuple(d["std"]))


def preprocessing(arch: str, image_size: int | None = None) -> Preprocessing:
    """Preprocessing from the weights' metadata (224 crop of a 256 resize), rescaled to ``image_size``."""
    t = imagenet_weights(arch).transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    if image_size is not None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32:
            raise UserError(f"data.image_size must be an integer of at least 32 (pixels), got {image_size!r}")
        resize, crop = round(image_size * resize / crop), image_size
    return Preprocessing(crop, resize, tuple(t.mean), tuple(t.std))


def check_head(head: str) -> str:
    """Return ``head`` if it names a head design, else raise a UserError listing them."""
    return check_value("model.head", head)


class ConcatPool(nn.Module):
    """Global max and average pooling side by side (fastai's ``AdaptiveConcatPool2d``): 2 x C values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


def pooled_classifier(num_classes: int, dropout: float = 0.5, channels: int = 512, hidden: int = 512) -> nn.Sequential:
    """fastai's ``create_head`` for VGG's 512 channels, laid out as VGG's classifier: ``[6]`` is the last layer.

    BatchNorm, dropout/2, linear to ``hidden``, ReLU, BatchNorm, dropout, linear to the classes, on
    the concatenated max and average pool of the last conv block (:class:`ConcatPool`). So
    ``classifier[:6]`` is the "fc" layer group (new here, so it always trains) and ``classifier[:5]``
    ends at the embedding, as with VGG's own head.
    """
    return nn.Sequential(
        nn.BatchNorm1d(2 * channels),
        nn.Dropout(dropout / 2),
        nn.Linear(2 * channels, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def reset_classifier(model: VGG, num_classes: int) -> None:
    """Replace the head (``classifier[6]``) with a fresh linear layer of ``num_classes`` outputs."""
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)


def layer_groups(model: VGG) -> dict[str, nn.Module]:
    """The model split into :data:`GROUPS`: head, fc6/fc7, and five conv blocks cut after each max-pool."""
    groups = {"head": model.classifier[6], "fc": model.classifier[:6]}
    start, block = 0, 1
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            groups[f"block{block}"] = model.features[start : i + 1]
            start, block = i + 1, block + 1
    return {name: groups[name] for name in GROUPS}


def feature_layers(model: VGG) -> dict[str, nn.Module]:
    """Named layers a user can point at (``block1`` ... ``block5``): each block's last conv layer."""
    convs: dict[str, nn.Module] = {}
    for name in BLOCKS:
        conv = [m for m in cast(nn.Sequential, layer_groups(model)[name]) if isinstance(m, nn.Conv2d)]
        convs[name] = conv[-1]
    return convs


def split_at_fc7(model: VGG) -> tuple[nn.Module, nn.Module]:
    """``(to_fc7, rest)``: image -> fc7 output after its ReLU (4096 values), and fc7 -> logits.

    ``rest(to_fc7(x))`` is ``model(x)``; both parts share the model's layers (nothing is copied).
    In eval mode the dropout between them is the identity, so fc7 is exactly what the head sees.
    """
    to_fc7 = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), model.classifier[:5])
    return to_fc7, model.classifier[5:]


def frozen_trunk(model: VGG, train_fc: bool) -> tuple[nn.Module, nn.Module]:
    """``(trunk, rest)`` of a VGG whose lower layers are frozen: ``rest(trunk(x)) == model(x)`` in eval mode.

    The trunk ends after the conv blocks (``train_fc``: fc6/fc7 still train) or after fc7.
    Both share the model's layers.
    """
    pooled = nn.Sequential(model.features, model.avgpool, nn.Flatten(1))
    if train_fc:
        return pooled, model.classifier
    return nn.Sequential(*pooled, model.classifier[:6]), model.classifier[6]


def mean_pooled_convs(model: VGG) -> nn.Module:
    """The last conv block's output averaged over its positions: 512 values per image at any image size
    (``vggtune audit``'s vectors; VGG's own ``avgpool`` copies a 1 x 1 map of a small image 49 times)."""
    return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def guess_arch(state: dict) -> str | None:
    """Which VGG a state dict comes from, by counting its conv layers; None if it is not a VGG."""
    convs = [k for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4]
    base = next((a for a, n in _CONV_LAYERS.items() if n == len(convs)), None)
    if base is None:
        return None
    return f"{base}_bn" if any(k.endswith("running_mean") for k in state) else base
