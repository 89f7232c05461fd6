"""The demo's stand-in for ImageNet: a VGG's conv layers pretrained here, briefly, on generated letters.

The offline demo cannot download ImageNet weights, and a network from random init shows nothing of
what vggtune is for. So it makes a pretrained file the way one is made, on a task of its own: five
letters (K to O, drawn in many sizes, angles and greys), which the conv layers learn within a minute
on a CPU; the demo then fine-tunes those weights on another task, five other letters (A to E) from
30 images each, as a user fine-tunes ImageNet weights on theirs. A plain PyTorch loop: this file is the input to the demo, not what it shows.
The file holds the conv layers only (``features.*``): the pooled head, vggtune's default, replaces
fc6 and fc7, and the conv layers of vgg11_bn are 37 MB where the whole network is 530 MB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vggtune.core.checks import check_positive_int
from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.data.demo import FAMILIES, make_demo_dataset
from vggtune.data.images import load_rgb
from vggtune.data.transforms import eval_transform
from vggtune.model.arch import check_arch, preprocessing

log = logging.getLogger(__name__)


def demo_weights(
    path: str | Path,
    arch: str = "vgg11_bn",
    image_size: int = 32,
    family: str = "letters-a",
    per_class: int = 150,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> Path:
    """The conv layers of ``arch`` trained on ``family``'s five classes, saved to ``path`` (once: kept and reused)."""
    for key, value in (("per_class", per_class), ("epochs", epochs), ("batch_size", batch_size)):
        check_positive_int(f"demo.pretrain.{key}", value)
    if family not in FAMILIES:
        raise UserError(f"demo.pretrain.family={family} is not a demo family: choose one of {', '.join(FAMILIES)}")
    path = Path(path).expanduser()
    if path.is_file():
        log.info("Demo: using the pretrained conv layers in %s (delete it to pretrain again)", path)
        return path
    data = path.parent / family
    if not data.is_dir():
        make_demo_dataset(data, per_class=per_class, size=48, classes=5, seed=seed + 1, family=family)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    items = [(f, c) for c, name in enumerate(classes) for f in sorted((data / name).iterdir())]
    log.info(
        "Demo: pretraining %s's conv layers on %d generated images of %s, %d epochs: a stand-in for "
        "ImageNet weights, made once",
        arch,
        len(items),
        ", ".join(classes),
        epochs,
    )
    torch.manual_seed(seed)
    prep = preprocessing(arch, image_size)
    transform = eval_transform(prep)  # decoded once: a few MB at this size
    images = TensorDataset(torch.stack([transform(load_rgb(f)) for f, _ in items]), torch.tensor([c for _, c in items]))
    loader = DataLoader(
        images,
        batch_size=min(batch_size, len(images)),
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    model = torchvision.models.get_model(check_arch(arch), weights=None)
    net = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, len(classes)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = time.perf_counter()
    fit_plain(
        net,
        optimizer,
        loader,
        epochs,
        lambda epoch, acc: log.info(
            "Demo: pretraining epoch %d/%d: train acc %.3f (%.0f s)",
            epoch + 1,
            epochs,
            acc,
            time.perf_counter() - start,
        ),
    )
    state = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    log.info("Demo: saved the pretrained conv layers to %s", path)
    return path


def fit_plain(
    net: nn.Module, optimizer: torch.optim.Optimizer, loader, epochs: int, report: Callable[[int, float], None]
) -> None:
    """A plain PyTorch loop (cross-entropy): ``report(epoch, training accuracy)`` after each epoch."""
    for epoch in range(epochs):
        net.train()
        correct = seen = 0
        for x, y in loader:
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        report(epoch, correct / max(seen, 1))
