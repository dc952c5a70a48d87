"""The fast data path: a split held as two tensors and served a whole batch at a time by indexing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

# The most bytes of tensors that `data.in_memory auto` holds (all splits together, per process).
AUTO_LIMIT_BYTES = 2 * 1024**3


class InMemorySplit(Dataset):
    """A split's inputs and targets as two tensors, on the CPU or already on the training device.

    A DataLoader passes `__getitems__` the indices of a whole batch, drawn by its sampler as for any dataset (so
    shuffling, seeding and DDP sharding stay the sampler's), and gets the batch from two index operations instead
    of one `__getitem__` per item and a collation. `transform`, when given, runs on each input in turn: a random
    augmentation draws for every image, as it does in the per-item path.

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
            inputs = torch.stack([self.transform(x) for x in inputs])
        return inputs, self.targets[index]

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


def stack_items(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of `dataset`, as (inputs, targets) tensors; fetched in one call when it has `__getitems__`."""
    indices = list(range(len(dataset)))
    if callable(getattr(dataset, "__getitems__", None)):
        items = dataset.__getitems__(indices)
    else:
        items = [dataset[i] for i in indices]
    inputs, targets = default_collate(items)
    return inputs, targets


def in_chunks(transform: Callable, inputs: torch.Tensor, size: int = 4096) -> torch.Tensor:
    """`transform` (a deterministic one, such as resizing and normalising) applied to `inputs` chunk by chunk."""
    return torch.cat([transform(chunk) for chunk in inputs.split(size)])
