"""The fast data path: a split held as two tensors and served a whole batch at a time by indexing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

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
        index = torch.as_tensor(indices, device=self.inputs.device)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of `dataset` as (inputs, targets) tensors, `per_item` applied to each input and its index
    (resizing, which makes images of any size stack, or naming one that does not) and `per_chunk` to each stacked
    chunk of inputs (normalising).

    Built a chunk at a time, so that memory peaks near the result's size, not at the size of every item as read;
    a chunk is fetched in one call when the dataset has `__getitems__`.
    """
    inputs, targets = [], []
    for start in range(0, len(dataset), chunk):
        indices = list(range(start, min(start + chunk, len(dataset))))
        items = fetch_items(dataset, indices)
        if per_item is not None:
            items = [(per_item(x, i), y) for i, (x, y) in zip(indices, items, strict=True)]
        x, y = default_collate(items)
        inputs.append(per_chunk(x) if per_chunk is not None else x)
        targets.append(y)
    return torch.cat(inputs), torch.cat(targets)
