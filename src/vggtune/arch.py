"""What each VGG architecture knows about itself: builder, weights, layer groups, preprocessing.

Everything architecture-specific lives here (as timm keeps ``pretrained_cfg`` beside each
builder), so the LightningModule, the freeze schedules and the tasks never index into
``features`` or ``classifier`` themselves.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from vggtune.errors import UserError

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")

# Layer groups from the top of the network down; a group's index is its depth, which sets its
# learning rate (base * lr_decay ** depth) and the order in which gradual unfreezing reaches it.
GROUPS = ("head", "fc", "block5", "block4", "block3", "block2", "block1")
BLOCKS = ("block1", "block2", "block3", "block4", "block5")  # the conv blocks, input side first

_CONV_LAYERS = {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}
# vgg: VGG's own fc6/fc7 (pretrained) and a new last layer | pooled: fastai's head, all new.
HEADS = ("vgg", "pooled")


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
    if head not in HEADS:
        raise UserError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
    return head


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
    return nn.Sequential(nn.BatchNorm1d(2 * channels), nn.Dropout(dropout / 2), nn.Linear(2 * channels, hidden),
                         nn.ReLU(inplace=True), nn.BatchNorm1d(hidden), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def build_vgg(arch: str, num_classes: int, weights: str = "imagenet", dropout: float = 0.5,
              head: str = "vgg") -> nn.Module:
    """torchvision's VGG with pretrained weights loaded and a head for ``num_classes``.

    ``weights`` is ``imagenet`` (torchvision's weights API and cache), ``none`` (random
    init) or the path of a state-dict file in torchvision's key layout. ``head="vgg"`` keeps the
    pretrained fc6/fc7 and replaces the last linear layer; ``head="pooled"`` replaces the average
    pool and the whole classifier with :func:`pooled_classifier` (the conv layers stay pretrained).
    """
    # torchvision refuses weights together with num_classes != 1000: build the ImageNet shape,
    # load, then swap the head.
    model = torchvision.models.get_model(check_arch(arch), weights=None, dropout=dropout)
    load_weights(model, arch, weights)
    if check_head(head) == "pooled":
        model.avgpool = ConcatPool()
        model.classifier = pooled_classifier(num_classes, dropout)
    else:
        reset_classifier(model, num_classes)
    return model


def load_weights(model: nn.Module, arch: str, weights: str = "imagenet", head: bool = False) -> None:
    """Load ``weights`` (``imagenet``, ``none`` or a state-dict file) into an ImageNet-shaped VGG.

    Everything but the head is loaded; ``head=True`` loads the 1000-class ImageNet head too, for
    using the pretrained network as it was trained (its predictions are ImageNet categories).
    """
    source = str(weights)
    if source.lower() == "none":
        return
    if source.lower() == "imagenet":
        state, source = _imagenet_state_dict(arch), "torchvision's ImageNet weights"
    else:
        state = load_state_dict_file(Path(source).expanduser())
    _load_backbone(model, arch, state, source)
    if head:
        head_state = {k.removeprefix("classifier.6."): v for k, v in state.items() if k.startswith("classifier.6.")}
        if head_state.keys() != {"weight", "bias"} or head_state["weight"].shape != model.classifier[6].weight.shape:
            raise UserError(f"weights {source} have no 1000-class ImageNet head: for a checkpoint written by "
                            "`vggtune train` pass ckpt=<file> instead of model.weights")
        model.classifier[6].load_state_dict(head_state)


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Replace the head (``classifier[6]``) with a fresh linear layer of ``num_classes`` outputs."""
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)


def layer_groups(model: nn.Module) -> dict[str, nn.Module]:
    """The model split into :data:`GROUPS`: head, fc6/fc7, and five conv blocks cut after each max-pool."""
    groups = {"head": model.classifier[6], "fc": model.classifier[:6]}
    start, block = 0, 1
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            groups[f"block{block}"] = model.features[start : i + 1]
            start, block = i + 1, block + 1
    return {name: groups[name] for name in GROUPS}


def feature_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Named layers a user can point at (``block1`` ... ``block5``): each block's last conv layer."""
    convs = {}
    for name in BLOCKS:
        conv = [m for m in layer_groups(model)[name] if isinstance(m, nn.Conv2d)]
        convs[name] = conv[-1]
    return convs


def split_at_fc7(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(to_fc7, rest)``: image -> fc7 output after its ReLU (4096 values), and fc7 -> logits.

    ``rest(to_fc7(x))`` is ``model(x)``; both parts share the model's layers (nothing is copied).
    In eval mode the dropout between them is the identity, so fc7 is exactly what the head sees.
    """
    to_fc7 = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), model.classifier[:5])
    return to_fc7, model.classifier[5:]


def _imagenet_state_dict(arch: str) -> dict:
    weights = imagenet_weights(arch)
    filename = os.path.basename(urlparse(weights.url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return load_state_dict_file(cached)
    try:
        # torch.hub defaults to weights_only=False; a weights file never needs to run code.
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
        raise UserError(f"weights file {path} does not exist: pass model.weights=<an existing .pth file>, "
                        "model.weights=imagenet or model.weights=none")
    from vggtune.checkpoint import safe_load  # checkpoint.py imports Lightning; arch.py does not need to

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


def _load_backbone(model: nn.Module, arch: str, state: dict, source: str) -> None:
    """Load everything but the head, which is replaced anyway and may have another class count."""
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.6.")}
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if state.keys() != expected.keys() or wrong:
        guess = guess_arch(state)
        hint = f"it looks like {guess} weights: pass model={guess}" if guess and guess != arch else \
            "pass weights saved from the same architecture"
        raise UserError(f"weights {source} do not fit {arch}: {hint}")
    model.load_state_dict(state, strict=False)


def guess_arch(state: dict) -> str | None:
    """Which VGG a state dict comes from, by counting its conv layers; None if it is not a VGG."""
    convs = [k for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4]
    base = next((a for a, n in _CONV_LAYERS.items() if n == len(convs)), None)
    if base is None:
        return None
    return f"{base}_bn" if any(k.endswith("running_mean") for k in state) else base
