"""``vggtune explain``: where the network looks for its top-k classes, and what each conv block sees.

Each image is preprocessed as evaluation does (resize, centre crop), so the explained
prediction is the one ``eval`` and ``predict`` make. The Grad-CAM heatmaps are then drawn back
onto the original image at its own size: they line up with the file the user gave.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from vggtune.core.checks import check_positive_int
from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb
from vggtune.inspect.gradcam import CropBox, block_activations, check_layer, feature_grid, gradcam, overlay
from vggtune.model.arch import feature_layers
from vggtune.tasks.runs import report_files, write_csv
from vggtune.use.inference import LoadedModel, find_images, image_batches, load_model_or_pretrained

log = logging.getLogger(__name__)

CSV_HEADER = ["image", "rank", "class", "probability", "overlay", "predicted"]


def explain_image(
    net: LoadedModel, x: torch.Tensor, path: Path, out_dir: Path, layer: str, top_k: int, channels: int
) -> list[list]:
    """Write the heatmaps, overlays and feature-map grid of one image into ``out_dir``; return its CSV rows.

    ``x`` is the preprocessed image (1, 3, S, S). ``heatmaps.npz`` holds ``heatmaps`` (top_k, height,
    width) in [0, 1] at the image's size (float16) and ``classes``, in rank order.
    """
    model = net.module.model
    layers = feature_layers(model)
    image = load_rgb(path)
    x = x.to(net.device)
    with torch.no_grad():
        top = net.module.probabilities(model(x))[0].topk(top_k)  # multi-label: the top labels' sigmoids
    classes = [net.class_names[c] for c in top.indices.tolist()]
    box = CropBox.of(image.size, net.preprocessing)
    heat = gradcam(model, layers[layer], x, top.indices.tolist(), box, image.size)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "heatmaps.npz", heatmaps=heat.astype(np.float16), classes=np.array(classes))
    # Predicted: the top class; with several labels per image, every label at or over its threshold.
    cut = dict(zip(net.class_names, net.thresholds())) if net.multilabel else {}
    predicted = [
        p >= cut[n] if net.multilabel else rank == 0 for rank, (n, p) in enumerate(zip(classes, top.values.tolist()))
    ]
    rows = []
    for rank, (name, p, h) in enumerate(zip(classes, top.values.tolist(), heat), start=1):
        file = out_dir / f"gradcam_{rank}_{_file_name(name)}.png"
        overlay(image, h, box).save(file)
        rows.append([str(path), rank, name, round(p, 6), file, "yes" if predicted[rank - 1] else "no"])
    title = f"{path.name}: the {channels} strongest channels of each block's last conv layer (after ReLU)"
    crop = image.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    fig = feature_grid(block_activations(model, layers, x), channels, title, crop)
    fig.savefig(out_dir / "feature_maps.png", dpi=100)
    log.info(
        "%s: %s",
        path,
        ", ".join(
            f"{n} {p:.1%}" + (" (predicted)" if net.multilabel and hit else "")
            for n, p, hit in zip(classes, top.values.tolist(), predicted)
        ),
    )
    return rows


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "class"


def _out_name(path: Path, base: Path, used: set[str]) -> str:
    """A folder name for an image's outputs: its path under the input folder without the suffix, unique."""
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    name = rel.with_suffix("").as_posix()
    if name in used:  # rose.jpg beside rose.png
        name = rel.as_posix().replace(".", "_")
    used.add(name)
    return name


def run(cfg: DictConfig) -> list[list]:
    """The ``vggtune explain`` task: heatmaps and feature maps for every image of ``input``."""
    layer = check_layer(str(cfg.layer))
    top_k = check_positive_int("top_k", cfg.top_k)
    channels = check_positive_int("channels", cfg.channels)
    paths = find_images(cfg.input)  # a missing input is reported before the model loads
    net = load_model_or_pretrained(cfg.ckpt, cfg.model.arch, cfg.model.weights, cfg.data.image_size, cfg.device)
    if top_k > len(net.class_names):
        log.info("top_k=%d but the model knows %d classes: showing all of them", top_k, len(net.class_names))
        top_k = len(net.class_names)
    base = Path(str(cfg.input)).expanduser()
    base = base if base.is_dir() else base.parent
    run_dir = Path(cfg.paths.run_dir)
    rows, failures = [], []
    used: set[str] = set()
    # One image a batch: each image has its own size, and its heatmaps are mapped back to it.
    for x, indices, bad in image_batches(paths, net.transform, batch_size=1):
        failures += [(paths[i], reason) for i, reason in bad]
        if len(paths) == 1 and failures:
            raise UserError(f"input {failures[0][0]} is {failures[0][1]}: pass an image file (jpg, png, ...)")
        if x is not None:
            out_dir = run_dir / _out_name(paths[indices[0]], base, used)
            rows += explain_image(net, x, paths[indices[0]], out_dir, layer, top_k, channels)
    if not rows:
        raise UserError(
            f"none of the {len(paths)} files in {base} is a readable image "
            f"(first: {failures[0][0].name}: {failures[0][1]})"
        )
    for path, reason in failures:
        log.warning("Skipped %s: %s", path, reason)
    write_csv(
        run_dir / "explain.csv", CSV_HEADER, [[*r[:4], Path(r[4]).relative_to(run_dir).as_posix(), r[5]] for r in rows]
    )
    report_files(
        run_dir,
        {
            "explain.csv": "image, rank, class, probability, overlay file, predicted: one row per heatmap",
            "<image>/gradcam_<rank>_<class>.png": f"Grad-CAM on {layer} over the image, at its size",
            "<image>/heatmaps.npz": "the heatmaps as numbers in [0, 1] (heatmaps, classes)",
            "<image>/feature_maps.png": "the strongest channels of every conv block",
        },
    )
    return rows
