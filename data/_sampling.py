"""The training order: a shuffle per epoch that a checkpoint can resume at any step, and random draws per item that
depend on the seed, the epoch and the item's place in the order alone."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class Draw(int):
    """A dataset index that carries `seed`, the seed of the random draws (augmentation, a dataset's own noise) made
    for this item at this place in this epoch's order."""

    seed: int

    def __new__(cls, index: int, seed: int) -> Draw:
        draw = super().__new__(cls, index)
        draw.seed = seed
        return draw

    def __reduce__(self) -> tuple[Any, ...]:  # to loader workers
        return (Draw, (int(self), self.seed))


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the item at `position` of epoch `epoch`'s order in a run seeded with `seed`."""
    return hash((seed, epoch, position)) & 0xFFFF_FFFF_FFFF_FFFF


@contextlib.contextmanager
def draws_of(indices: list[int], torch_only: bool = False) -> Iterator[None]:
    """For items drawn as `indices`: when they are Draws, leave torch's CPU generator (and, unless `torch_only`,
    Python's and NumPy's) as it was outside, so that the items' seeded draws neither take from nor shift the
    training's (dropout's) random stream. Plain indices (a sequential order, as `overfit_batches` sets) draw from the
    generators as they are."""
    if not indices or not isinstance(indices[0], Draw):
        yield
        return
    state = torch.get_rng_state()
    others = None if torch_only else (random.getstate(), np.random.get_state())
    try:
        yield
    finally:
        torch.set_rng_state(state)
        if others is not None:
            random.setstate(others[0])
            np.random.set_state(others[1])


def seed_draws(index: int, torch_only: bool = False) -> None:
    """Seed torch's CPU generator (and, unless `torch_only`, Python's and NumPy's) for the item drawn as `index`, if
    it is a Draw. Torchvision's transforms draw from torch's alone; a dataset's own code may draw from any."""
    if isinstance(index, Draw):
        torch.default_generator.manual_seed(index.seed)  # the CPU's alone: torch.manual_seed would reseed the GPUs'
        if not torch_only:
            random.seed(index.seed)
            np.random.seed(index.seed & 0xFFFF_FFFF)


class EpochShuffle(DistributedSampler):
    """A random order of the items for each epoch, drawn from `seed` and the epoch alone, each device taking its
    share as DistributedSampler does (Lightning leaves a DistributedSampler as it is); the indices come as Draws,
    or as plain ints when `draws` is False (a split that makes no random draws per item: no seeds to carry).

    Lightning calls `set_epoch` before each epoch, so a resumed run sees the same order as the interrupted one
    would have; a shuffle drawn from the global random state would depend on everything drawn before it.
    `resume(epoch, items)` starts the next pass at the place a checkpoint recorded, in the middle of an epoch too.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0, draws: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.draws = draws
        self._skip = (0, 0)  # the epoch, and the items of this device's share of it, that a checkpoint had done

    def resume(self, epoch: int, items: int) -> None:
        """Start the next pass after the first `items` of this device's share of epoch `epoch`, or at the start of
        the next epoch when that share is done."""
        if items >= self.num_samples:
            epoch, items = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = (epoch, items)

    def __iter__(self) -> Iterator[int]:
        (epoch, items), self._skip = self._skip, (0, 0)
        skip = items if epoch == self.epoch else 0
        indices = super().__iter__()
        if not self.draws:
            return islice(indices, skip, None)
        positions = range(self.rank, self.total_size, self.num_replicas)  # their places in the epoch's whole order
        pairs = islice(zip(indices, positions, strict=True), skip, None)
        return iter([Draw(index, draw_seed(self.seed, self.epoch, position)) for index, position in pairs])


class SeededItems(Dataset):
    """A training split served item by item, each item's random draws (augmentation, a dataset's own noise) seeded
    by its Draw: the same in a loader worker as in the main process, and the same after resuming."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        items = []
        with draws_of(indices):
            for index in indices:
                seed_draws(index)
                items.append(self.dataset[int(index)])
        return items
