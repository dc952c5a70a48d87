"""The LightningDataModule: builds the Dataset named by `dataset` from `data/<dataset>.py` and serves its splits."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, random_split

from utils import ConfigError, find_class


class DInterface(pl.LightningDataModule):
    """Train/val/test splits and loaders for the `Dataset` defined in `data/<dataset>.py`.

    A dataset whose constructor takes `train: bool` (the torchvision convention) brings its own test split:
    `train=False` is the test set and validation is carved from `train=True`. Any other dataset is one pool,
    split at random into train, val and test. Random splits use `split_seed`, never the global seed, so they
    stay the same whatever the training seed.

    Args:
        dataset: Dataset file in `data/`, without `.py`.
        dataset_args: Constructor arguments of that dataset (on the command line: `--data.dataset_args.NAME VALUE`).
        val_fraction: Share of the training data held out for validation.
        test_fraction: Share held out for testing; only for datasets without a test split of their own
            (default 0.2 for them).
        split_seed: Seed of the random splits.
        batch_size: Samples per batch.
        num_workers: Loader worker processes (0 loads in the main process).
        pin_memory: Page-locked host memory, for faster copies to a GPU.
        persistent_workers: Keep workers alive between epochs (needs num_workers > 0).
    """

    def __init__(
        self,
        dataset: str = "line",
        dataset_args: dict[str, Any] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float | None = None,
        split_seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset_class = find_class("data", dataset, Dataset)
        self.has_test_split = "train" in inspect.signature(self.dataset_class).parameters
        if self.has_test_split and test_fraction is not None:
            raise ConfigError(f"data.test_fraction: dataset {dataset!r} has its own test split; remove test_fraction")
        self.test_fraction = 0.2 if test_fraction is None else test_fraction
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        if not 0 <= self.test_fraction < 1 or val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"data.test_fraction must be in [0, 1) and leave training data next to val_fraction={val_fraction}, "
                f"got {self.test_fraction}"
            )
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"data.batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if persistent_workers and num_workers == 0:
            raise ConfigError("data.persistent_workers needs data.num_workers > 0")
        self.batch_size = batch_size  # an attribute, so that Lightning's batch-size finder can set it
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        args = self.hparams.dataset_args or {}
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        val = self.hparams.val_fraction
        if self.has_test_split:
            pool = self.dataset_class(train=True, **args)
            self.test_set = self.dataset_class(train=False, **args)
            self.train_set, self.val_set = random_split(pool, [1 - val, val], generator=generator)
        else:
            pool = self.dataset_class(**args)
            test = self.test_fraction
            self.train_set, self.val_set, self.test_set = random_split(
                pool, [1 - val - test, val, test], generator=generator
            )
        self.dataset = pool

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.persistent_workers,
        )
