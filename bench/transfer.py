"""Transfer tasks for the recipe benchmark: generated image families, and VGGs pretrained on them here.

A task is (source family, target family): a VGG is trained from random init on the source classes
(plain PyTorch, cached under the work folder), and both tools fine-tune that same state dict on the
target classes, from the same files and the same train/val split.

Families (all generated, nothing downloaded; scikit-learn's digits are the final check, in
``recipe.py --final``, and are not used for tuning):

  letters-a   letters K-O drawn with Pillow's bundled font: grey glyphs on noisy grey, random size,
  letters-b   offset, rotation and stroke (letters-b: A-E)
  textures    the demo's five coloured textures (checks, stripes, dots)
  shapes      five filled shapes (disc, square, triangle, cross, ring) on a noisy coloured background
  digits      scikit-learn's bundled 8x8 scans of handwritten digits, upsampled (0-4 and 5-9)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from vggtune.training.demo_weights import fit_plain

SOURCE_SIZE = 48  # pixels of the files written; the tools resize to the benchmark's image size
FAMILIES = ("letters-a", "letters-b", "textures", "shapes", "digits-a", "digits-b")
TASKS = {  # name: (source family used for pretraining, target family fine-tuned on)
    "letters": ("letters-a", "letters-b"),
    "shapes": ("textures", "shapes"),
    "digits": ("digits-a", "digits-b"),  # the final check only
}


def _letters(chars: str):
    from vggtune.data.demo import draw_letter

    return (lambda cls, rng: draw_letter(chars[cls], SOURCE_SIZE, rng)), list(chars)


def _textures():
    from vggtune.data.demo import PATTERNS, draw_pattern

    return (lambda cls, rng: draw_pattern(PATTERNS[cls], SOURCE_SIZE, rng)), list(PATTERNS)


def _shapes():
    from vggtune.data.demo import SHAPES, draw_shape

    return (lambda cls, rng: draw_shape(SHAPES[cls], SOURCE_SIZE, rng)), list(SHAPES)


def _digits(lo: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    by_class = {c: d.images[d.target == c] for c in range(lo, lo + 5)}
    counters = {c: 0 for c in by_class}

    def draw(cls: int, rng: np.random.Generator) -> Image.Image:
        c = lo + cls
        imgs = by_class[c]
        i = counters[c] % len(imgs)
        counters[c] += 1
        a = (imgs[i] * (255 / 16)).astype(np.uint8)
        return Image.fromarray(255 - a).resize((SOURCE_SIZE, SOURCE_SIZE), Image.BILINEAR).convert("RGB")

    return (
        draw,
        [str(c) for c in range(lo, lo + 5)],
        {str(c): len(v) for c, v in zip(range(lo, lo + 5), by_class.values())},
    )


def family(name: str):
    """``(draw(cls, rng) -> image, class names, per-class limit or None)``."""
    if name == "letters-a":
        return (*_letters("KLMNO"), None)
    if name == "letters-b":
        return (*_letters("ABCDE"), None)
    if name == "textures":
        return (*_textures(), None)
    if name == "shapes":
        return (*_shapes(), None)
    if name in ("digits-a", "digits-b"):
        return _digits(0 if name == "digits-a" else 5)
    raise ValueError(f"unknown family {name!r}: one of {FAMILIES}")


def write_split(root: Path, name: str, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` for family ``name`` (written once).

    For digits, ``val_per_class`` is a maximum: every scan not in train goes to val.
    """
    if (root / "done.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    draw, classes, limit = family(name)
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(classes):
        n_val = val_per_class if limit is None else min(val_per_class, limit[cls] - train_per_class)
        for subset, n in (("train", train_per_class), ("val", n_val)):
            (root / subset / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(c, rng).save(root / subset / cls / f"{cls}_{i:04d}.png")
    (root / "done.json").write_text(json.dumps({"family": name, "classes": classes}))
    return root


def pretrain(
    work: Path,
    source: str,
    arch: str = "vgg11_bn",
    size: int = 32,
    per_class: int = 200,
    epochs: int = 4,
    seed: int = 0,
) -> Path:
    """A VGG trained from random init on ``source`` (plain PyTorch); its state dict's path (cached).

    Two phases, because at 32 px VGG's ImageNet classifier (fc6 reads 512 x 7 x 7 copies of a 1 x 1
    map) does not start learning from random init within a CPU budget: the conv layers train first
    under a pooled linear head (AdamW, crops), then fc6, fc7 and the head train on the frozen conv
    features. The result has VGG's full shape, every layer trained on the source task, as a user's
    pretrained file has: good on its own task, not tuned for the target.
    """
    out = work / f"pretrained-{arch}-{source}-{size}px.pth"
    if out.exists():
        return out
    data = write_split(work / f"data-{source}-pretrain", source, per_class, 0, seed=seed + 100)
    torch.manual_seed(seed)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    ds = torchvision.datasets.ImageFolder(
        str(data / "train"), transform=v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), *norm])
    )
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=1, drop_last=True)
    model = torchvision.models.get_model(arch, weights=None)
    model.classifier[6] = nn.Linear(4096, len(ds.classes))
    t0 = time.perf_counter()

    def fit(net, opt, loader, n_epochs, what):
        fit_plain(
            net,
            opt,
            loader,
            n_epochs,
            lambda epoch, acc: print(
                f"  pretrain {source} {what} epoch {epoch}: train acc {acc:.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            ),
        )

    convs = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, len(ds.classes)))
    fit(convs, torch.optim.AdamW(convs.parameters(), lr=1e-3, weight_decay=1e-4), dl, epochs, "conv layers")
    model.eval()
    ds.transform = v2.Compose([v2.Resize(size, antialias=True), *norm])
    with torch.no_grad():
        feats, labels = zip(
            *[
                (model.avgpool(model.features(x)).flatten(1), y)
                for x, y in torch.utils.data.DataLoader(ds, batch_size=64)
            ]
        )
    pooled = torch.utils.data.TensorDataset(torch.cat(feats), torch.cat(labels))
    # SGD as VGG's own recipe (weight decay 5e-4): fc7 activations and logits stay at the scale of
    # torchvision's ImageNet VGGs (mean |fc7| about 1, |logits| about 10), where AdamW here gave
    # 40x larger ones that no target recipe recovers from.
    fit(
        model.classifier,
        torch.optim.SGD(model.classifier.parameters(), lr=2e-3, momentum=0.9, weight_decay=5e-4),
        torch.utils.data.DataLoader(pooled, batch_size=32, shuffle=True),
        3,
        "fc6/fc7/head",
    )
    with torch.no_grad():
        fc7 = model.classifier[:5](pooled.tensors[0][:200])
        logits = model.classifier[5:](fc7)
    print(f"  pretrain {source}: mean |fc7| {fc7.abs().mean():.2f}, mean |logit| {logits.abs().mean():.2f}", flush=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out)
    return out
