"""Datasets whose random augmentation depends only on (seed, epoch, item), and the sampler that sets the epoch."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from vggtune.core.errors import UserError
from vggtune.data.images import load_rgb


class SeededDataset(Dataset):
    """A dataset whose item ``i`` in epoch ``e`` draws its randomness from a seed made of (seed, e, i).

    Augmentation is then the same whatever the number of workers, and a resumed run replays its
    epochs exactly. The epoch lives in shared memory, so persistent workers see :meth:`set_epoch`.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Tell the dataset (and its workers) which epoch's randomness to draw."""
        self._epoch.fill_(epoch)

    @contextmanager
    def seeded(self, index: int):
        """Within the block, torch's RNG is seeded for item ``index`` of the current epoch."""
        if self.seed is None:
            yield
            return
        sample_seed = (self.seed * 1_000_003 + int(self._epoch) * 65_537 + index) % 2**63
        # The CPU generator only, where the transforms draw: torch.manual_seed would also queue a
        # seeding of every accelerator's generators, recording a stack trace each time (0.2-0.3 ms
        # per image on a CPU core here).
        if get_worker_info() is not None:  # a worker process owns its RNG
            torch.default_generator.manual_seed(sample_seed)
            yield
            return
        with torch.random.fork_rng(devices=[]):  # leave the main process's RNG (dropout) alone
            torch.default_generator.manual_seed(sample_seed)
            yield


class ImageListDataset(SeededDataset):
    """(image tensor, class index) for a list of (path, class index) pairs."""

    def __init__(self, items: list[tuple[Path, int]], transform, seed: int | None = None):
        super().__init__(seed)
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            image = load_rgb(path)
        except Exception as e:  # noqa: BLE001 - name the file, whatever PIL raised
            raise UserError(f"could not decode {path} during training ({type(e).__name__}: {e}); "
                            "run with data.verify=full to find such files before training starts") from None
        with self.seeded(index):
            return self.transform(image), label


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (order from seed + epoch, one shard per rank), also on one device.

    Lightning calls ``set_epoch`` before every epoch, a resumed one too, so the order and the
    dataset's per-sample augmentation seeds depend on nothing but (seed, epoch): a run resumed
    from a checkpoint replays its epochs exactly. Lightning keeps a DistributedSampler as it is.
    """

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class BalancedSampler(EpochSampler):
    """Each epoch, ``len(dataset)`` draws with replacement in which every class is equally likely.

    The draw depends only on (seed, epoch), like :class:`EpochSampler`'s order, and every rank makes
    the same draw and takes its own share of it (every ``num_replicas``-th item from ``rank`` on):
    under DDP the ranks see different images, and a resumed run replays its epochs exactly.
    """

    def __init__(self, dataset: Dataset, labels: list[int], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} items")
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return iter(drawn[self.rank:self.total_size:self.num_replicas])
