"""Datasets whose random augmentation depends only on (seed, epoch, item), the samplers that set the epoch,
and the training loader that resumes part-way through one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

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


def multi_hot(label: tuple[int, ...], num_labels: int) -> torch.Tensor:
    """A multi-label target: float 1.0 at each of the image's class indices, 0.0 elsewhere."""
    target = torch.zeros(num_labels)
    target[list(label)] = 1.0
    return target


class ImageListDataset(SeededDataset):
    """(image tensor, class index) for a list of (path, class index) pairs; with ``num_labels``
    (multi-label), (image tensor, multi-hot float target) for (path, tuple of class indices) pairs."""

    def __init__(
        self,
        items: list[tuple[Path, int | tuple[int, ...]]],
        transform,
        seed: int | None = None,
        num_labels: int | None = None,
    ):
        super().__init__(seed)
        self.items = items
        self.transform = transform
        self.num_labels = num_labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            image = load_rgb(path)
        except Exception as e:  # noqa: BLE001 - name the file, whatever PIL raised
            raise UserError(
                f"could not decode {path} during training ({type(e).__name__}: {e}); "
                "run with data.verify=full to find such files before training starts"
            ) from None
        target = label if self.num_labels is None else multi_hot(cast(tuple, label), self.num_labels)
        with self.seeded(index):
            return self.transform(image), target


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (order from seed + epoch, one shard per rank), also on one device.

    Lightning calls ``set_epoch`` before every epoch, a resumed one too, so the order and the
    dataset's per-sample augmentation seeds depend on nothing but (seed, epoch): a run resumed
    from a checkpoint replays its epochs exactly. Lightning keeps a DistributedSampler as it is.
    """

    _start: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def start_at(self, epoch: int, index: int) -> None:
        """The next pass over ``epoch`` leaves out the first ``index`` items of this rank's order (a resume)."""
        self._start = (epoch, index) if index > 0 else None

    def __iter__(self):
        return self._resumed(list(super().__iter__()))

    def _resumed(self, order: list[int]):
        if self._start is not None and self._start[0] == self.epoch:
            order = order[self._start[1] :]
            self._start = None  # once: the epochs after it run whole
        return iter(order)


class BalancedSampler(EpochSampler):
    """Each epoch, ``len(dataset)`` draws with replacement in which every class is equally likely.

    The draw depends only on (seed, epoch), like :class:`EpochSampler`'s order, and every rank makes
    the same draw and takes its own share of it (every ``num_replicas``-th item from ``rank`` on):
    under DDP the ranks see different images, and a resumed run replays its epochs exactly.
    """

    def __init__(
        self,
        dataset: Dataset,
        labels: Sequence[int | tuple[int, ...]],
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if len(labels) != len(cast(Sized, dataset)):
            raise ValueError(f"{len(labels)} labels for {len(cast(Sized, dataset))} items")
        counts = Counter(labels)
        self.weights = torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return self._resumed(drawn[self.rank : self.total_size : self.num_replicas])


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning counts as resumable mid-epoch (it has ``state_dict``/``load_state_dict``).

    Where an interrupted epoch goes on is set before this loader exists: the data module's own state
    (restored before ``train_dataloader`` is called) tells the :class:`EpochSampler` to leave out the
    batches already trained, and (seed, epoch, item) fix everything else. The loader's state cannot
    carry it: Lightning makes the iterator before it restores a loader's state, and restores none
    when ``estimated_stepping_batches`` built the loader first, as a one-cycle schedule does
    (lightning #20550). Its state is the position, kept in the checkpoint for the record.
    """

    def __init__(self, *args, position: Callable[[], dict], **kwargs):
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict:
        return self._position()

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to do: the data module's state already put the sampler at this position."""
