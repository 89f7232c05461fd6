"""Streaming from litdata shards against the image cache and the PIL loader, on the same JPEGs, in one run.

Three ways to feed training, each with seeded random crops and flips (``data.augment=light``):

* ``pil``: the plain loader, decoding and transforming every JPEG each epoch (``data.cache_images=false``);
* ``image_cache``: the one-time uint8 cache file, crops and flips on the device (``data.cache_images=true``);
* ``stream``: shards written once by ``vggtune prepare`` (uint8 squares, a local folder), read by litdata's
  loader, crops and flips on the device (``data.stream=...``).

Measured: (1) the loader alone, images/s of the second pass over the training images (the first
builds the cache or warms the page cache), batches through the same on-device step training uses;
(2) ``vggtune train`` (``train()`` composed from the shipped configs, checkpoints off), images/s of
the training epochs after the first (median epoch, training steps and the data wait included). The
one-time work (decoding into the cache, writing the shards) is timed apart.

    python bench/stream.py --out bench/results/stream-cpu-2026-12-02.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from epoch_overhead import EpochTimer  # noqa: E402

CASES = ("pil", "image_cache", "stream")


def make_jpegs(root: Path, images: int, seed: int = 0) -> Path:
    """``images`` 320x240 JPEGs in two class folders: smooth random colour fields (cost like photos to decode)."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def datamodule(case: str, data: Path, shards: Path, cache: Path, args):
    from vggtune.data.datamodule import ClassFolderDataModule

    kw = dict(
        image_size=args.size,
        batch_size=args.batch,
        num_workers=args.workers,
        augment="light",
        arch=args.arch,
        val_split=0.2,
        test_split=0.0,
        cache_dir=str(cache),
        seed=1,
    )
    if case == "stream":
        return ClassFolderDataModule(stream=str(shards), **kw)
    dm = ClassFolderDataModule(str(data), cache_images=case == "image_cache", **kw)
    if case == "image_cache":
        dm.use_image_cache()
    return dm


def loader_speed(case: str, data: Path, shards: Path, cache: Path, args) -> dict:
    """Images/s of one pass over the training images, after a first pass; batches through the device step."""
    dm = datamodule(case, data, shards, cache, args)
    dm.setup("fit")
    passes = []
    for epoch in range(2):
        loader = dm.train_dataloader()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for batch in loader:
            x, _ = dm.on_after_batch_transfer(batch, 0) if dm._on_device_transform else batch
            n += len(x)
        passes.append({"images": n, "seconds": time.perf_counter() - start})
    return {"passes": passes, "images_per_s": passes[-1]["images"] / passes[-1]["seconds"]}


def train_speed(case: str, data: Path, shards: Path, work: Path, args) -> dict:
    """Images/s of ``vggtune train`` epochs after the first (median epoch)."""
    from hydra import compose, initialize_config_module

    from vggtune.tasks.train import train

    source = (
        [f"data.stream={shards}"]
        if case == "stream"
        else [f"data.root={data}", f"data.cache_images={'true' if case == 'image_cache' else 'false'}"]
    )
    overrides = [
        *source,
        f"model={args.arch}",
        "model.weights=none",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        "data.augment=light",
        "data.test_split=0",
        "trainer=cpu",
        f"trainer.max_epochs={args.epochs}",
        "finetune=full",
        "optim=sgd",
        "callbacks.best_checkpoint=null",
        "callbacks.last_checkpoint=null",
        "~logger",
        "seed=1",
        "trainer.enable_progress_bar=false",
        f"paths.run_dir={work / case}",
        f"data.cache_dir={work / 'cache'}",
        "+callbacks.epoch_timer._target_=epoch_overhead.EpochTimer",
    ]
    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    epochs = EpochTimer.made[-1].epochs
    later = [e["epoch_s"] for e in epochs[1:]]
    images = epochs[0]["train_steps"] * args.batch
    return {"wall_s": wall, "epochs": epochs, "train_images": images, "images_per_s": images / statistics.median(later)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from hydra.core.global_hydra import GlobalHydra

    from vggtune.data.datamodule import ClassFolderDataModule
    from vggtune.data.stream_write import write_stream

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="vggtune-bench-stream-"))
    data = make_jpegs(work / "jpegs", args.images)
    source = ClassFolderDataModule(
        str(data), image_size=args.size, arch=args.arch, val_split=0.2, test_split=0.0, batch_size=1, seed=1
    )
    start = time.perf_counter()
    info = write_stream(source.split, source.preprocessing, str(work / "shards"), workers=args.workers)
    results = {
        "prepare": {"seconds": time.perf_counter() - start, "bytes": info["bytes"], "images": info["images"]},
        "loader": {},
        "train": {},
    }
    for case in CASES:
        results["loader"][case] = loader_speed(case, data, work / "shards", work / "cache", args)
        print(f"loader {case}: {results['loader'][case]['images_per_s']:.0f} images/s", flush=True)
    for case in CASES:
        GlobalHydra.instance().clear()
        results["train"][case] = train_speed(case, data, work / "shards", work, args)
        print(f"train {case}: {results['train'][case]['images_per_s']:.1f} images/s", flush=True)
    results["setup"] = {
        **vars(args),
        "out": str(args.out),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "note": "shared 2-core machine: other jobs ran at the same time; compare cases within a run",
    }
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text[:2000])


if __name__ == "__main__":
    main()
