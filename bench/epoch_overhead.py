"""Per-epoch overhead of `vggtune train` with its defaults: what an epoch costs beyond training and validating.

Issue 13's goal: at most 10% of an epoch of 1,000 training images on a CPU. The run is `train()`
composed from the shipped configs with every default on (checkpoints written each epoch, TensorBoard
with its figures, the progress bar's plain lines, loader worker processes), plus one callback that
times each epoch from its start to the next one's, and inside it every training step (from
``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, optimizer) and every validation
step. Overhead = epoch - training steps - validation steps: waiting for data, checkpoint saves,
figures, logging, hooks. Epoch 0 (the head-only epoch of freeze_unfreeze, and the first one) is
reported but not in the median.

    python bench/epoch_overhead.py --out bench/results/epoch-overhead-cpu-2026-12-01.json
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

import lightning.pytorch as pl
import torch
import torchvision


class EpochTimer(pl.Callback):
    """Wall time of each epoch, and the time spent inside its training and validation steps."""

    made: list[EpochTimer] = []  # the instances Hydra built from the config, newest last

    def __init__(self):
        self.epochs: list[dict] = []
        self._mark = 0.0
        EpochTimer.made.append(self)

    def on_train_epoch_start(self, trainer, pl_module):
        self._close(time.perf_counter())
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "start": time.perf_counter(),
                "train_steps_s": 0.0,
                "val_steps_s": 0.0,
                "train_steps": 0,
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epochs[-1]["train_steps_s"] += time.perf_counter() - self._mark
        self.epochs[-1]["train_steps"] += 1

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._mark = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.epochs and not trainer.sanity_checking:
            self.epochs[-1]["val_steps_s"] += time.perf_counter() - self._mark

    def on_train_end(self, trainer, pl_module):
        self._close(time.perf_counter())

    def _close(self, now: float) -> None:
        if self.epochs and "epoch_s" not in self.epochs[-1]:
            e = self.epochs[-1]
            e["epoch_s"] = now - e.pop("start")
            e["overhead_s"] = e["epoch_s"] - e["train_steps_s"] - e["val_steps_s"]
            e["overhead_fraction"] = e["overhead_s"] / e["epoch_s"]


def run(work: Path, overrides: list[str]) -> list[dict]:
    from hydra import compose, initialize_config_module

    from vggtune.tasks.train import train

    with initialize_config_module("vggtune.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.run_dir={work / 'run'}",
                f"data.cache_dir={work / 'cache'}",
                "+callbacks.epoch_timer._target_=__main__.EpochTimer",
                *overrides,
            ],
        )
    train(cfg)
    return EpochTimer.made[-1].epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from vggtune.data.demo import make_demo_dataset

    work = Path(tempfile.mkdtemp(prefix="vggtune-overhead-"))
    data = make_demo_dataset(work / "letters", per_class=240, size=48, classes=5, family="letters-b")
    weights = work / "vgg11_bn.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11_bn().state_dict(), weights)
    base = [
        f"data.root={data}",
        "model=vgg11_bn",
        f"model.weights={weights}",
        f"data.image_size={args.size}",
        "data.val_split=0.1667",
        "data.test_split=0",
        f"trainer.max_epochs={args.epochs}",
        "callbacks.progress_bar.mode=plain",
        "test_after_fit=false",
    ]
    variants = {
        "defaults": [],
        "no figures": ["logger.images_every_n_epochs=0"],
        "no last.ckpt, no figures": ["callbacks.last_checkpoint=null", "logger.images_every_n_epochs=0"],
    }
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "size": args.size,
        "epochs": args.epochs,
        "variants": {},
    }
    for i, (name, extra) in enumerate(variants.items()):
        epochs = run(work / f"v{i}", base + extra)
        later = [e["overhead_fraction"] for e in epochs[1:]]
        result["variants"][name] = {
            "epochs": epochs,
            "median_overhead_fraction_after_epoch_0": statistics.median(later),
        }
        print(name, json.dumps(result["variants"][name], indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"work folder (delete when done): {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
