"""The LightningDataModule: builds the Dataset named by `dataset` from `data/<dataset>.py` and serves its splits."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, random_split

from utils import ConfigError, find_class


class DInterface(pl.LightningDataModule):
    """Train/val/test splits and loaders for the `Dataset` defined in `data/<dataset>.py`.

    A dataset whose constructor takes `train: bool` (the torchvision convention) brings its own test split:
    `train=False` is the test set and validation is carved from `train=True`. Any other dataset is one pool,
    split at random into train, val and test. Random splits use `split_seed`, never the global seed, so they
    stay the same whatever the training seed.

    Image data (items whose input is a C x H x W tensor) gets the transforms below; augmentation touches the
    training split only. After `setup`, `example` is one item as the model sees it in evaluation, `dims`
    describes the data for the model (see `data_dims`) and `classes` holds the class names of a
    classification dataset (its `classes` attribute).

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
        resize: Resize images to [height, width] (or [size] for the shorter side); null keeps their size.
        normalize: Normalise image channels with the dataset's `mean`/`std` attributes (0.5 when it has none).
        random_crop_padding: Augment: pad training images by this many pixels and crop back at random.
        horizontal_flip: Augment: flip training images left-right at random.
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
        resize: list[int] | None = None,
        normalize: bool = True,
        random_crop_padding: int | None = None,
        horizontal_flip: bool = False,
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
        if resize is not None and (len(resize) not in (1, 2) or min(resize) < 1):
            raise ConfigError(f"data.resize must be [height, width] or [size] with positive sizes, got {resize}")
        if random_crop_padding is not None and random_crop_padding < 0:
            raise ConfigError(f"data.random_crop_padding must be >= 0, got {random_crop_padding}")
        self.batch_size = batch_size  # an attribute, so that Lightning's batch-size finder can set it
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.example: tuple[Any, Any] | None = None
        self.dims: dict[str, Any] = {}
        self.classes: list[str] | None = None

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
        for name, split in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if len(split) == 0:
                raise ConfigError(
                    f"the {name} split of {self.hparams.dataset!r} is empty ({len(pool)} items in the pool): "
                    "use more data or change data.val_fraction / data.test_fraction"
                )
        self.dataset = pool
        self.classes = getattr(pool, "classes", None)
        x, y = pool[0]
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            train_transform, eval_transform = self._image_transforms(x)
            self.train_set = TransformedDataset(self.train_set, train_transform)
            self.val_set = TransformedDataset(self.val_set, eval_transform)
            self.test_set = TransformedDataset(self.test_set, eval_transform)
            x = eval_transform(x)
        elif self.hparams.resize or self.hparams.random_crop_padding is not None or self.hparams.horizontal_flip:
            raise ConfigError(
                f"data.resize, random_crop_padding and horizontal_flip are for images (C x H x W tensors); "
                f"{self.hparams.dataset!r} gives inputs of shape {list(getattr(x, 'shape', []))}"
            )
        self.example = (x, y)  # one item as the model sees it in evaluation
        self.dims = data_dims(self.example, self.classes)

    def _image_transforms(self, image: torch.Tensor) -> tuple[Callable, Callable]:
        """The training transform (evaluation's, with augmentation after resizing) and the evaluation one."""
        from torchvision.transforms import v2

        hp = self.hparams
        resize = [v2.Resize(hp.resize, antialias=True)] if hp.resize else []
        normalize = []
        if hp.normalize:
            channels = image.shape[0]
            mean = getattr(self.dataset, "mean", (0.5,) * channels)
            std = getattr(self.dataset, "std", (0.5,) * channels)
            normalize.append(v2.Normalize(mean, std))
        size = resize[0](image).shape[1:] if resize else image.shape[1:]
        augment = []
        if hp.random_crop_padding is not None:
            augment.append(v2.RandomCrop(list(size), padding=hp.random_crop_padding))
        if hp.horizontal_flip:
            augment.append(v2.RandomHorizontalFlip())
        return _compose(resize + augment + normalize), _compose(resize + normalize)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, sampler=EpochShuffle(len(self.train_set), torch.initial_seed()))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    @property
    def predict_set(self) -> Dataset | None:
        """What `predict` runs on: the test split."""
        return self.test_set

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.persistent_workers,
        )


class EpochShuffle(Sampler[int]):
    """A random order of `size` items for each epoch, drawn from `seed` and the epoch alone.

    Lightning calls `set_epoch` before each epoch (under DDP through its sampler wrapper, which then shards the
    order), so a run resumed from a checkpoint sees the same order as the interrupted run would have; a shuffle
    drawn from the global random state would depend on everything drawn before it.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _compose(transforms: list[Callable]) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose(transforms) if transforms else v2.Identity()


class TransformedDataset(Dataset):
    """`dataset` with `transform` applied to each item's input; one per split, so augmentation stays in training."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x, y = self.dataset[index]
        return self.transform(x), y


def item_ids(dataset: Dataset) -> list[str]:
    """An id per item of a split, for prediction files: its file name when the dataset reads files (a `files`
    list, or `images` naming files), else its index in the dataset it was split from."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, (TransformedDataset, Subset)):
        if isinstance(dataset, Subset):
            indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    names = getattr(dataset, "files", None) or getattr(dataset, "images", None)
    if isinstance(names, list) and names and isinstance(names[0], (str, Path)):
        return [str(names[i]) for i in indices]
    return [str(i) for i in indices]


def data_dims(example: tuple[Any, Any], classes: list[str] | None) -> dict[str, Any]:
    """What the model needs to know about the data, from one transformed item and the class names.

    `input_size` (features per input), `output_size` (outputs per item: the number of classes, or the
    target's size for regression), and for classification `num_classes`, for images `in_channels` and
    `image_size` [height, width]. A network whose constructor has parameters of these names gets them.
    """
    x, y = (torch.as_tensor(v) for v in example)
    dims: dict[str, Any] = {"input_size": x.numel(), "output_size": len(classes) if classes else y.numel()}
    if classes:
        dims["num_classes"] = len(classes)
    if x.dim() == 3:
        dims["in_channels"], dims["image_size"] = x.shape[0], list(x.shape[1:])
    return dims
