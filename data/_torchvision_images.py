"""Torchvision's built-in image datasets held as uint8 tensors: the base of mnist.py, fashion_mnist.py, cifar10.py."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import Dataset

from data._images import data_root
from utils import ConfigError


class TorchvisionImages(Dataset):
    """One split of a torchvision dataset, decoded once into memory (MNIST-sized sets fit easily).

    Subclasses name the torchvision class and its per-channel normalisation constants.

    Args:
        root: Folder holding the dataset in torchvision's layout (e.g. `ROOT/MNIST/raw/`).
        train: The training split if True, else the test split.
        download: Download the files into `root` when they are missing (needs internet).
    """

    source: ClassVar[str]  # class name in torchvision.datasets
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def __init__(self, root: str = "datasets", train: bool = True, download: bool = False) -> None:
        import torchvision.datasets

        if not download:
            data_root(root, self.source, f"{self.source}/ in torchvision's layout")
        try:
            dataset = getattr(torchvision.datasets, self.source)(root, train=train, download=download)
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
            raise ConfigError(
                f"no {self.source} data under {Path(root).resolve()}: point --data.root to the folder that holds "
                f"it in torchvision's layout, or add --data.dataset_args.download true ({error})"
            ) from error
        images = torch.as_tensor(dataset.data)
        # MNIST-like sets are N x H x W, CIFAR is N x H x W x C: store N x C x H x W.
        self.images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.long)
        self.classes: list[str] = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Many items at once (DataLoader and the in-memory path use it): one conversion for all of them."""
        images = self.images[indices].float().div_(255)
        return list(zip(images, self.targets[indices].tolist(), strict=True))
