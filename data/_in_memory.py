"""The fast data path: a split held as two tensors and served a whole batch at a time by indexing."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from data._sampling import draws_of, seed_draws

# The most bytes of tensors that `data.in_memory auto` holds (all splits together, per process).
AUTO_LIMIT_BYTES = 2 * 1024**3


class InMemorySplit(Dataset):
    """A split's inputs and targets as two tensors, on the CPU or already on the training device.

    A DataLoader passes `__getitems__` the indices of a whole batch, drawn by its sampler as for any dataset (so
    shuffling, seeding and DDP sharding stay the sampler's), and gets the batch from two index operations instead
    of one `__getitem__` per item and a collation. `transform`, when given, runs on each input in turn, its random
    draws seeded by the index's Draw (see data/_sampling.py) as in the per-item path.

    Args:
        inputs: All inputs of the split, stacked.
        targets: All targets, stacked.
        source: The per-item split these tensors were built from (for item ids).
        transform: What to apply to each input of a batch (training augmentation), or None.
    """

    def __init__(
        self, inputs: torch.Tensor, targets: torch.Tensor, source: Dataset, transform: Callable | None = None
    ) -> None:
        self.inputs, self.targets, self.dataset, self.transform = inputs, targets, source, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices, dtype=torch.long, device=self.inputs.device)  # faster than as_tensor here
        inputs = self.inputs[index]
        if self.transform is not None:
            with draws_of(indices, torch_only=True):
                inputs = torch.stack([self._transformed(x, i) for x, i in zip(inputs, indices, strict=True)])
        return inputs, self.targets[index]

    def _transformed(self, x: torch.Tensor, index: int) -> torch.Tensor:
        seed_draws(index, torch_only=True)  # the transform is torchvision's, which draws from torch alone
        return self.transform(x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.__getitems__([index])
        return inputs[0], targets[0]


def whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's `collate_fn` for an InMemorySplit, whose `__getitems__` returns the batch made."""
    return batch


def tensor_items(item: Any) -> bool:
    """Whether a dataset item is an (input tensor, target tensor or number) pair, which stacks into tensors."""
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], torch.Tensor)
        and isinstance(item[1], (torch.Tensor, int, float))
    )


def fetch_items(dataset: Dataset, indices: list[int]) -> list[Any]:
    """The items at `indices`, in one call when the dataset has `__getitems__` (as DataLoader does)."""
    fetch = getattr(dataset, "__getitems__", None)
    return fetch(indices) if callable(fetch) else [dataset[i] for i in indices]


def stack_items(
    dataset: Dataset,
    per_item: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    per_chunk: Callable | None = None,
    chunk: int = 1024,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of `dataset` as (inputs, targets) tensors, `per_item` applied to each input and its index
    (resizing, which makes images of any size stack, or naming one that does not) and `per_chunk` to each stacked
    chunk of inputs (normalising).

    Built a chunk at a time into tensors made once, so that memory peaks near the result's size, not at twice it;
    a chunk is fetched in one call when the dataset has `__getitems__`. When reading the first chunk shows that the
    rest would take more than `PARALLEL_AFTER_SECONDS` (decoding image files), the rest is read by `workers`
    processes (None: one per idle core, up to 8; on Linux, whose processes fork), each a chunk at a time; the
    result is the same, as long as an item depends on its index alone.
    """
    chunks = _Chunks(dataset, per_item, per_chunk, chunk)
    began = time.perf_counter()
    x, y = chunks[0]
    workers = _workers_for(len(chunks) - 1, time.perf_counter() - began, workers)
    inputs = torch.empty((len(dataset), *x.shape[1:]), dtype=x.dtype)
    targets = [y]
    inputs[: len(x)] = x
    start = len(x)
    rest = range(1, len(chunks))
    if workers:
        rest = DataLoader(
            Subset(chunks, rest),
            batch_size=None,
            num_workers=workers,
            multiprocessing_context="fork",
            worker_init_fn=_ignore_sigterm,
            generator=torch.Generator(),  # the workers' seeds: not a draw from the training's random stream
        )
    for part in rest:
        x, y = chunks[part] if isinstance(part, int) else part
        if isinstance(x, BaseException):  # raised in a worker: the error as it was, not the loader's traceback
            raise x
        if x.shape[1:] != inputs.shape[1:] or x.dtype != inputs.dtype:
            raise RuntimeError(
                f"the items of one dataset must stack: inputs of shape {tuple(inputs.shape[1:])} ({inputs.dtype}) and "
                f"{tuple(x.shape[1:])} ({x.dtype})"
            )
        inputs[start : start + len(x)] = x
        start += len(x)
        targets.append(y)
    return inputs, torch.cat(targets)


# Reading the items in worker processes pays when it would take longer than this in one.
PARALLEL_AFTER_SECONDS = 1.0


def _workers_for(chunks_left: int, seconds_per_chunk: float, workers: int | None) -> int:
    """How many processes read the chunks left: none when they are quick to read in this one, when fewer than two
    cores are idle, or where processes do not fork (forking is what lets them share the dataset as it is)."""
    if workers is not None:
        return min(workers, chunks_left)
    if chunks_left * seconds_per_chunk < PARALLEL_AFTER_SECONDS or not sys.platform.startswith("linux"):
        return 0
    # The cores no other process keeps busy (the load average counts this one): on a shared machine more
    # processes than those only contend, and reading slows down.
    idle = round(len(os.sched_getaffinity(0)) - os.getloadavg()[0] + 1)
    return min(8, idle, chunks_left) if idle > 1 else 0


def _ignore_sigterm(worker_id: int) -> None:
    """A SIGTERM sent to the whole job is the main process's to handle (it stops at the next training step)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Chunks(Dataset):
    """`dataset` as stacked chunks of `size` items: chunk k is (inputs, targets) of items k * size, k * size + 1...,
    or (the error, None) when reading one failed, so that a worker process hands the error back unchanged."""

    def __init__(self, dataset: Dataset, per_item: Callable | None, per_chunk: Callable | None, size: int) -> None:
        self.dataset, self.per_item, self.per_chunk, self.size = dataset, per_item, per_chunk, size

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.size)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        indices = list(range(index * self.size, min((index + 1) * self.size, len(self.dataset))))
        try:
            items = fetch_items(self.dataset, indices)
            if self.per_item is not None:
                items = [(self.per_item(x, i), y) for i, (x, y) in zip(indices, items, strict=True)]
            x, y = default_collate(items)
            return (self.per_chunk(x) if self.per_chunk is not None else x), y
        except Exception as error:
            if index == 0 or torch.utils.data.get_worker_info() is None:
                raise
            return error, None
