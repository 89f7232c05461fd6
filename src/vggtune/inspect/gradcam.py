"""Where a VGG looks: Grad-CAM heatmaps (captum) in the image's own pixels, overlays, feature-map grids.

captum (PyTorch's own interpretability library) computes Grad-CAM and the layer activations:
its ``LayerGradCam`` owns the forward and backward hooks, copes with VGG's in-place ReLUs, and
takes several target classes in one batch; ``LayerActivation`` records several layers in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation, LayerAttribution, LayerGradCam
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from torch import nn

from vggtune.core.errors import UserError
from vggtune.model.arch import BLOCKS, Preprocessing


def check_layer(name: str) -> str:
    """``name`` if it is a conv block a heatmap can be computed on, else a UserError listing them."""
    if name not in BLOCKS:
        raise UserError(
            f"unknown layer '{name}': choose one of {', '.join(BLOCKS)} "
            "(each means the last conv layer of that block; block5 is the default)"
        )
    return name


@dataclass(frozen=True)
class CropBox:
    """The square of the original image that the network saw (resize, then centre crop), in its pixels."""

    left: int
    top: int
    width: int
    height: int

    @classmethod
    def of(cls, image_size: tuple[int, int], prep: Preprocessing) -> CropBox:
        """The crop box of an image of ``image_size`` (width, height) under ``prep``."""
        w, h = image_size
        # As torchvision's Resize(int) and CenterCrop compute them: the short side becomes
        # resize_size, the long one is truncated; the crop offset is rounded.
        short, long = min(w, h), max(w, h)
        resized_long = int(prep.resize_size * long / short)
        rw, rh = (prep.resize_size, resized_long) if w <= h else (resized_long, prep.resize_size)
        crop = prep.image_size
        sx, sy = w / rw, h / rh  # original pixels per resized pixel
        left, top = round(int(round((rw - crop) / 2.0)) * sx), round(int(round((rh - crop) / 2.0)) * sy)
        return cls(left, top, max(1, min(w - left, round(crop * sx))), max(1, min(h - top, round(crop * sy))))

    def covers(self, image_size: tuple[int, int]) -> bool:
        """True when the network saw the whole image."""
        return (self.width, self.height) == tuple(image_size)


def gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: list[int], box: CropBox, image_size: tuple[int, int]
) -> np.ndarray:
    """Grad-CAM of ``layer`` for each target class of one image ``x`` (1, 3, S, S), in the image's pixels.

    Returns (len(targets), height, width) float32 in [0, 1]: each map divided by its maximum (an
    all-zero map, no positive evidence anywhere, stays zero). Outside the crop the network did
    not see, the map is zero.
    """
    batch = x.expand(len(targets), -1, -1, -1)
    cams = LayerGradCam(model, layer).attribute(batch, target=targets, relu_attributions=True)
    cams = LayerAttribution.interpolate(cams.detach(), (box.height, box.width), interpolate_mode="bilinear")
    cams = cams[:, 0].clamp(min=0).float().cpu()
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp(min=1e-30), torch.zeros_like(cams))
    w, h = image_size
    full = torch.zeros(len(targets), h, w)
    full[:, box.top : box.top + box.height, box.left : box.left + box.width] = cams
    return full.numpy()


def overlay(image: Image.Image, heat: np.ndarray, box: CropBox | None = None) -> Image.Image:
    """The image with ``heat`` (values in [0, 1], the image's size) laid over it in colour.

    The colour's opacity follows the heat, so cold regions show the plain image. A crop box
    that does not cover the whole image is outlined: outside it the network saw nothing.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    colour = colormaps["jet"](heat)[..., :3]
    alpha = 0.6 * heat[..., None]
    out = Image.fromarray((255 * (rgb * (1 - alpha) + colour * alpha)).round().astype(np.uint8))
    if box is not None and not box.covers(image.size):
        line = max(1, round(min(image.size) / 200))
        ImageDraw.Draw(out).rectangle(
            [box.left, box.top, box.left + box.width - 1, box.top + box.height - 1], outline=(255, 255, 255), width=line
        )
    return out


def block_activations(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named layer's output for one image ``x``, rectified (what the next layer sees), (C, h, w) on the CPU."""
    with torch.no_grad():
        outputs = LayerActivation(model, list(layers.values())).attribute(x)
    return {name: F.relu(out[0]).float().cpu() for name, out in zip(layers, outputs)}


def feature_grid(activations: dict[str, torch.Tensor], channels: int, title: str, crop: Image.Image) -> Figure:
    """One row per block: its ``channels`` strongest channels (highest mean activation), each on its own scale.

    The first column shows ``crop``, the input the maps are of, once.
    """
    cols = min(channels, min(a.shape[0] for a in activations.values()))
    fig = Figure(figsize=(1.6 * (cols + 1), 1.75 * len(activations) + 0.4), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(activations), cols + 1, squeeze=False)
    for ax in axes[:, 0]:
        ax.axis("off")
    axes[0, 0].imshow(crop)
    axes[0, 0].set_title("input (crop)", fontsize=8)
    for row, (name, act) in zip(axes[:, 1:], activations.items()):
        strongest = act.mean(dim=(1, 2)).argsort(descending=True)[:cols]
        for ax, c in zip(row, strongest.tolist()):
            ax.imshow(act[c].numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(f"{name} ch {c}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
