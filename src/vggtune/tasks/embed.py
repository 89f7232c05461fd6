"""``vggtune embed``: every image of a data set as its 4096-d fc7 vector, and maps of those vectors.

The vector is fc7's output after its ReLU, in eval mode. After the ReLU because that is what
the head reads (and what the classic "CNN codes" are: the ReLU thresholds them at zero, as in
training); in eval mode because dropout is then off, so an image always gets the same vector.
It is computed by running the network up to fc7 (:func:`vggtune.model.arch.split_at_fc7`) and then
the rest of it for the prediction, in one pass and without hooks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from vggtune.core.checks import check_positive_int
from vggtune.core.errors import UserError
from vggtune.core.files import atomic_open
from vggtune.data.discovery import DataSplit, labelled_images
from vggtune.data.optional import import_stream
from vggtune.data.transforms import tta_transform
from vggtune.data.workers import resolve_workers
from vggtune.inspect.embedding_maps import check_metric, pca_2d, scatter_png, silhouette, tsne_2d, write_projector
from vggtune.model.arch import split_at_fc7
from vggtune.tasks.runs import rel, report_files, write_csv, write_json
from vggtune.use.inference import LoadedModel, image_batches, load_model_or_pretrained
from vggtune.use.stream_eval import subset_batches

Batch = tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """fc7 vectors of the images that could be read, with their predictions and thumbnails."""

    vectors: np.ndarray  # (N, 4096) float32
    predicted: list[int]
    kept: list[int]  # index into the input paths of each row
    thumbnails: torch.Tensor  # (N, 3, t, t) uint8
    failures: list[tuple[int, str]] = field(default_factory=list)


@torch.inference_mode()
def encode(net: LoadedModel, batches: Iterable[Batch], paths: list[Path], thumb_size: int = 32) -> Encoded:
    """Run every image through the network once: its fc7 vector, its predicted class, a thumbnail.

    ``batches`` yields (images, indices into ``paths``, failures), as :func:`image_batches` does.
    """
    to_fc7, rest = split_at_fc7(net.module.model)
    mean = torch.tensor(net.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.preprocessing.std).view(1, 3, 1, 1)
    vectors, predicted, kept, thumbs, failures = [], [], [], [], []
    for x, indices, bad in batches:
        failures += bad
        if x is None:
            continue
        fc7 = to_fc7(x.to(net.device))
        predicted += rest(fc7).argmax(dim=1).tolist()
        vectors.append(fc7.float().cpu().numpy())
        kept += indices
        # The projector's thumbnails are the crops the network saw, un-normalised.
        small = F.interpolate(x * std + mean, size=(thumb_size, thumb_size), mode="bilinear", antialias=True)
        thumbs.append((small.clamp(0, 1) * 255).round().to(torch.uint8))
    if not kept:
        raise UserError(
            f"none of the {len(paths)} images could be read (first: {paths[failures[0][0]]}: {failures[0][1]})"
        )
    return Encoded(np.concatenate(vectors), predicted, kept, torch.cat(thumbs), failures)


def _stream_batches(source, split: DataSplit, net: LoadedModel, batch_size: int, workers: int) -> Iterator[Batch]:
    """Every subset of a prepared stream in turn, as :func:`image_batches` yields a folder's images."""
    views, offset = tta_transform(net.preprocessing, "none"), 0
    for subset, items in split.subsets.items():
        for x, positions in subset_batches(source, subset, views, batch_size, workers):
            yield x[:, 0], [offset + i for i in positions], []
        offset += len(items)


def _images(cfg: DictConfig):
    """The data set to embed, and the prepared stream it comes from (None: files)."""
    data = cfg.data
    if data.get("stream"):
        storage = OmegaConf.to_container(data.storage_options) if data.get("storage_options") else None
        source = import_stream().Stream(str(data.stream), storage)
        return source.split(), source
    columns = {k: data.get(k) for k in ("path_column", "label_column", "split_column")}
    return labelled_images(
        data.root, data.verify, data.on_bad_image, data.get("labels"), columns, data.get("label_delim")
    ), None


def run(cfg: DictConfig) -> dict:
    """The ``vggtune embed`` task: vectors, CSV, maps, projector files and the silhouette score."""
    data = cfg.data
    batch_size = check_positive_int("data.batch_size", data.batch_size)
    workers = resolve_workers(data.num_workers)
    projector_max = check_positive_int("projector_max", cfg.projector_max)
    check_metric(cfg.metric)
    split, source = _images(cfg)  # the folder, CSV or stream is checked before the model loads
    items = [item for subset in split.subsets.values() for item in subset]
    classes = split.classes
    if split.multilabel:  # one colour per point: the image's first label (sorted), or "(no label)"
        if any(not label for _, label in items):
            classes = [*classes, "(no label)"]
        items = [(path, label[0] if label else len(classes) - 1, label) for path, label in items]
        log.info("Several labels per image: each point is coloured by the image's first label")
    image_size = data.image_size
    if source is not None and image_size is None and not cfg.ckpt:  # the size the stream was prepared for
        image_size = int(source.info["preprocessing"]["image_size"])
    net = load_model_or_pretrained(cfg.ckpt, cfg.model.arch, cfg.model.weights, image_size, cfg.device)
    network = str(net.path) if cfg.ckpt else f"torchvision {cfg.model.arch}, weights {cfg.model.weights}"
    log.info(
        "Embedding %d images of %d classes from %s with %s on %s",
        len(items),
        len(split.classes),
        split.root if source is None else source.url,
        network,
        net.device,
    )
    start = time.perf_counter()
    thumb = max(8, min(48, 8192 // math.ceil(math.sqrt(min(len(items), projector_max)))))  # sprite <= 8192 px
    paths = [item[0] for item in items]
    if source is None:
        batches = image_batches(paths, net.transform, batch_size, workers)
    else:  # the stored squares must be the network's resize size: its crops are cut from them
        source.check_fits(net.preprocessing, str(net.module.hparams.get("arch", cfg.model.arch)), bool(cfg.ckpt))
        batches = _stream_batches(source, split, net, batch_size, workers)
    enc = encode(net, batches, paths, thumb)
    log.info("fc7 vectors of %d images in %.1f s", len(enc.kept), time.perf_counter() - start)

    run_dir = Path(cfg.paths.run_dir)
    rows = [
        (items[i][0].relative_to(split.root).as_posix(), split.label_text(items[i][-1]), net.class_names[p])
        for i, p in zip(enc.kept, enc.predicted)
    ]
    labels = np.array([items[i][1] for i in enc.kept])
    skipped = [(str(b.path), b.reason) for b in split.skipped] + [(str(items[i][0]), r) for i, r in enc.failures]
    with atomic_open(run_dir / "embeddings.npy", "wb") as f:
        np.save(f, enc.vectors)
    write_csv(run_dir / "embeddings.csv", ["path", "class", "predicted"], rows)
    summary = {
        "images": len(rows),
        "dimensions": int(enc.vectors.shape[1]),
        "data_root": str(split.root),
        "data_stream": source and source.url,
        "network": network,
        "classes": classes,
        "metric": cfg.metric,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    files = {
        "embeddings.npy": f"{enc.vectors.shape[0]} x {enc.vectors.shape[1]} fc7 vectors (float32)",
        "embeddings.csv": "path, class, predicted: one row per vector, in the same order",
    }
    files.update(_maps(enc.vectors, labels, classes, cfg, run_dir, summary))
    files.update(_projector(enc, rows, cfg, run_dir, projector_max))
    write_json(run_dir / "embed.json", summary)
    files["embed.json"] = "counts, silhouette score, skipped files"
    for path, reason in skipped[:10]:
        log.warning("Skipped %s: %s", path, reason)
    if len(skipped) > 10:
        log.warning("... and %d more skipped files, listed in embed.json", len(skipped) - 10)
    score = summary["silhouette"]
    log.info(
        "Silhouette score by class: %s",
        f"{score:.3f} ({cfg.metric}, on the {enc.vectors.shape[1]}-d vectors; "
        "-1 to 1, higher: classes better separated)"
        if score is not None
        else "undefined (needs at least two classes and more images than classes)",
    )
    report_files(run_dir, files)
    return summary


def _maps(
    vectors: np.ndarray, labels: np.ndarray, classes: list[str], cfg: DictConfig, run_dir: Path, summary: dict
) -> dict[str, str]:
    """PCA and t-SNE scatter plots and the silhouette score; what was written."""
    summary["silhouette"] = silhouette(vectors, labels, cfg.metric, cfg.seed)
    if len(vectors) < 2:
        log.warning("Only one image: no 2-D maps")
        return {}
    n = len(vectors)
    points, ratio = pca_2d(vectors)
    scatter_png(
        points,
        labels,
        classes,
        f"PCA of fc7 vectors ({n} images)",
        run_dir / "pca.png",
        (f"PC1 ({ratio[0]:.1%} of variance)", f"PC2 ({ratio[1]:.1%} of variance)"),
    )
    log.info("t-SNE of %d vectors ...", n)
    points, perplexity = tsne_2d(vectors, float(cfg.tsne.perplexity), cfg.metric, cfg.seed)
    scatter_png(
        points, labels, classes, f"t-SNE of fc7 vectors ({n} images, perplexity {perplexity:.3g})", run_dir / "tsne.png"
    )
    summary.update(pca_explained_variance=[float(r) for r in ratio], tsne_perplexity=perplexity)
    return {
        "pca.png": "the vectors' first two principal components, coloured by class",
        "tsne.png": "t-SNE map of the vectors, coloured by class",
    }


def _projector(
    enc: Encoded, rows: list[tuple[str, str, str]], cfg: DictConfig, run_dir: Path, limit: int
) -> dict[str, str]:
    """TensorBoard projector files for the vectors (a random sample of ``limit`` when there are more)."""
    keep = np.arange(len(rows))
    if len(rows) > limit:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), limit, replace=False))
        log.info("TensorBoard projector: a random sample of %d of the %d vectors (projector_max)", limit, len(rows))
    metadata = [[rows[i][1], rows[i][2], rows[i][0]] for i in keep]
    write_projector(
        run_dir / "projector",
        enc.vectors[keep],
        metadata,
        ["class", "predicted", "path"],
        enc.thumbnails[torch.from_numpy(keep)],
    )
    return {
        "projector/": f"vectors, labels and thumbnails: tensorboard --logdir {rel(run_dir / 'projector')}, "
        "tab Projector"
    }
