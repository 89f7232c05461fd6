"""vggtune against plain PyTorch on the same JPEG folder, side by side in one run.

    python bench/bench.py                                   # CPU, small sizes (minutes on 2 cores)
    python bench/bench.py --device cuda --arch vgg16 --size 224 --batch 128 --images 4096 \\
        --workers 16 --compile --out $OUT/bench.json        # a GPU, full sizes

Cases (images/s, steady state, first steps and one-time caches excluded):
  plain_synthetic[_compiled]   torchvision VGG + vggtune's optim=sgd on random tensors already on the device
  plain_frozen_synthetic       the same with the conv features frozen
  plain_jpeg_loop              ImageFolder + PIL + RandomResizedCrop loader into that loop
  vggtune_full_jpeg            `vggtune train` (finetune=full) from the JPEG folder
  vggtune_frozen_jpeg          `vggtune train` (linear_probe, fc6/fc7 train) from the JPEG folder
  step time                    per-step time of vggtune's Lightning loop (logger, LR monitor and progress
                               bar on) vs the plain loop, same batch, no loader processes beside either
                               (CPU only: a GPU step is asynchronous)
  cached features              epoch time of a linear probe recomputing the backbone vs reading its cache
On a GPU both sides use bf16 autocast, channels_last, cudnn.benchmark and TF32 matmuls.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from vggtune.tasks.train import train

R: dict = {}
SGD = OmegaConf.load(resources.files("vggtune.conf") / "optim" / "sgd.yaml")  # both sides' optimizer


class StepTimer(pl.Callback):
    """Images/s over the training steps after ``skip`` (device synced at the window's ends only),
    seconds per step (meaningful on the CPU, where nothing runs asynchronously) and epoch times."""

    last: StepTimer | None = None  # the timer of the latest run: train() builds it from the config

    def __init__(self, skip: int = 5):
        self.skip, self.steps, self.epochs, self.seen, self.count = skip, [], [], 0, 0
        self.start = self.end = None
        StepTimer.last = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.skip:
            _sync()
            self.start = time.perf_counter()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen <= self.skip:
            return
        self.steps.append(time.perf_counter() - self._t0)
        if self.end is not None:
            return  # the timed window is the first epoch's steps after `skip`
        self.count += len(batch[1])
        if self.end is None and batch_idx + 1 == trainer.num_training_batches:
            _sync()
            self.end = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(time.perf_counter() - self._epoch0)

    def throughput(self) -> float:
        return self.count / (self.end - self.start)

    def step_seconds(self) -> float:
        return float(np.median(self.steps))


def make_jpegs(root: Path, n: int, classes: int = 8) -> Path:
    """``n`` 500x375 JPEGs (gradients plus noise) in ``classes`` folders, written once, by all cores."""
    if (root / "done").exists():
        return root
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    # fork: nothing has touched CUDA yet, and spawned workers would import torch and Lightning again
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_write_jpeg, [(root / f"c{i % classes}" / f"{i}.jpg", i) for i in range(n)], chunksize=64))
    (root / "done").touch()
    return root


def _write_jpeg(job: tuple[Path, int]) -> None:
    path, seed = job
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 500, dtype=np.float32)
    a = (base[None, :, None] * rng.random((375, 1, 3)) + rng.normal(0, 12, (375, 500, 3))).clip(0, 255)
    Image.fromarray(a.astype("uint8")).save(path, quality=90)


def plain_loop(args, batches, frozen=False, compiled=False) -> tuple[float, float]:
    """(images/s, median seconds per step) of a plain training loop over ``batches`` (an iterator).

    The optimizer is vggtune's ``optim=sgd`` config (the same update as the vggtune runs below);
    the device is synchronised at the ends of the timed window only, as in a real loop."""
    dev = torch.device(args.device)
    model = torchvision.models.get_model(args.arch, num_classes=8).to(dev)
    if args.device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if frozen:
        model.features.requires_grad_(False)
    opt = instantiate(SGD)([p for p in model.parameters() if p.requires_grad])
    fwd = torch.compile(model) if compiled else model
    times, count, start = [], 0, None
    for step, (x, y) in enumerate(batches):
        if step == args.warmup:
            _sync()
            start, count = time.perf_counter(), 0
        t0 = time.perf_counter()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        count += len(y)
        if step + 1 >= args.warmup + args.steps:
            break
    _sync()
    return count / (time.perf_counter() - start), float(np.median(times[args.warmup :]))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synthetic(args):
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 8, (args.batch,), device=args.device)
    while True:
        yield x, y


def jpeg_loader(args, root):
    tf = T.Compose(
        [
            T.RandomResizedCrop(args.size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dl = torch.utils.data.DataLoader(
        datasets.ImageFolder(root, tf),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=args.device == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    while True:
        yield from dl


def vggtune_run(args, root, work, name, *overrides, batches: int | None = None, logged: bool = False) -> StepTimer:
    """`vggtune train` in this process (Hydra's compose API), timed by a StepTimer callback.

    Checkpoints are off (they are written at epoch ends, outside the timed steps, 0.5-1.5 GB each);
    ``logged=True`` keeps the rest of a default run: TensorBoard logger and its callbacks, LR monitor,
    progress bar."""
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    limit = (
        [f"+trainer.limit_train_batches={batches or args.warmup + args.steps}", "trainer.max_epochs=1"]
        if batches != 0
        else []
    )
    quiet = [] if logged else ["trainer.enable_progress_bar=false", "~logger", "callbacks.lr_monitor=null"]
    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.root={root}",
                f"model={args.arch}",
                "model.weights=none",
                f"model.compile={args.compile}",
                f"data.image_size={args.size}",
                f"data.batch_size={args.batch}",
                f"data.num_workers={args.workers}",
                "data.val_split=0.05",
                "data.test_split=0",
                f"data.cache_dir={work / 'cache'}",
                f"trainer.accelerator={accelerator}",
                *quiet,
                "callbacks.best_checkpoint=null",
                "callbacks.last_checkpoint=null",
                "trainer.enable_checkpointing=false",
                "trainer.num_sanity_val_steps=0",
                "+trainer.limit_val_batches=1",
                f"paths.run_dir={work / name}",
                "test_after_fit=false",
                *limit,
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.callbacks["timer"] = {"_target_": "__main__.StepTimer", "skip": args.warmup}
    train(cfg)
    return StepTimer.last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default="vgg11")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating plain/vggtune step-time pairs")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    work = Path(tempfile.mkdtemp(prefix="vggtune-bench-"))
    root = make_jpegs(Path(os.environ.get("BENCH_JPEGS", "/tmp/vggtune-bench-jpegs")) / str(args.images), args.images)
    R.update(
        device=torch.cuda.get_device_name(0) if args.device == "cuda" else _cpu_name(),
        cpus=os.cpu_count(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        lightning=pl.__version__,
        date=time.strftime("%Y-%m-%d"),
        args=vars(args),
    )

    R["plain_synthetic"], _ = plain_loop(args, synthetic(args))
    if args.compile:
        R["plain_synthetic_compiled"], _ = plain_loop(args, synthetic(args), compiled=True)
    R["plain_frozen_synthetic"], _ = plain_loop(args, synthetic(args), frozen=True)
    R["plain_jpeg_loop"], _ = plain_loop(args, jpeg_loader(args, root), compiled=args.compile)
    R["vggtune_full_jpeg"] = vggtune_run(args, root, work, "full", "finetune=full", "optim=sgd").throughput()
    # Step time on the same work: no loader processes beside the loop on either side (the plain loop's
    # batches are ready tensors; vggtune's timer starts once the batch is fetched). Alternated and
    # repeated: one pair differs by up to 10% on a shared 2-core machine either way.
    plain, ours = [], []
    for i in range(args.repeats if args.device == "cpu" else 0):  # a GPU step is asynchronous
        plain.append(plain_loop(args, synthetic(args))[1])
        ours.append(
            vggtune_run(
                args, root, work, f"step{i}", "finetune=full", "optim=sgd", "data.num_workers=0", logged=True
            ).step_seconds()
        )
    if plain:
        R["step_seconds_plain"], R["step_seconds_vggtune"] = float(np.median(plain)), float(np.median(ours))
    R["vggtune_frozen_jpeg"] = vggtune_run(
        args, root, work, "frozen", "finetune=linear_probe", "finetune.train_fc=true", "optim=sgd"
    ).throughput()
    probe = ["finetune=linear_probe", "data.augment=none", "trainer.max_epochs=5", "data.cache_images=false"]
    R["epoch_seconds_uncached"] = vggtune_run(args, root, work, "uncached", *probe, batches=0).epochs[1:]
    R["epoch_seconds_cached"] = vggtune_run(
        args, root, work, "cached", *probe, "data.cache_features=true", batches=0
    ).epochs[1:]

    reference = R.get("plain_synthetic_compiled", R["plain_synthetic"])
    R["ratios"] = {
        "vggtune_full_jpeg / plain_synthetic" + ("_compiled" if args.compile else ""): R["vggtune_full_jpeg"]
        / reference,
        "vggtune_frozen_jpeg / plain_frozen_synthetic": R["vggtune_frozen_jpeg"] / R["plain_frozen_synthetic"],
        "vggtune_full_jpeg / plain_jpeg_loop": R["vggtune_full_jpeg"] / R["plain_jpeg_loop"],
        "epoch uncached / cached": float(np.median(R["epoch_seconds_uncached"]) / np.median(R["epoch_seconds_cached"])),
    }
    if plain:
        R["ratios"]["step time vggtune / plain"] = R["step_seconds_vggtune"] / R["step_seconds_plain"]
    report = "\n".join(
        f"{k:48s} {v:10.3f}" if isinstance(v, float) else f"{k:48s} {v}"
        for k, v in R.items()
        if k not in ("ratios", "args")
    )
    report += "\nratios:\n" + "\n".join(f"  {k:46s} {v:8.3f}" for k, v in R["ratios"].items())
    print(report)
    if args.out:
        Path(args.out).write_text(json.dumps(R, indent=2))


if __name__ == "__main__":
    sys.exit(main())
