"""The LightningDataModule: builds the Dataset named by `dataset` from `data/<dataset>.py` and serves its splits."""

from __future__ import annotations

import inspect
import math
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, random_split

from data._in_memory import (
    AUTO_LIMIT_BYTES,
    InMemorySplit,
    fetch_items,
    stack_items,
    tensor_items,
    whole_batch,
)
from data._new_inputs import check_description, describe, new_inputs
from data._sampling import EpochShuffle, SeededItems
from data._torchvision_style import transform_arguments
from data_contract import class_labels, classes_from_targets, data_dims
from outputs_and_items import ItemPairs, item_keys
from trust import check_plain, checked_load_arguments, shown
from utils import ConfigError, DataError, construct, find_class

SPLITS = ("train", "val", "test")
# Lightning warns that a loader without `state_dict` cannot resume mid-epoch: DInterface's `state_dict` does it.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class DInterface(pl.LightningDataModule):
    """Train/val/test splits and loaders for the `Dataset` defined in `data/<dataset>.py`.

    A dataset whose constructor takes `train: bool` (the torchvision convention) brings its own test split:
    `train=False` is the test set and validation is carved from `train=True`. Any other dataset is one pool,
    split at random into train, val and test. Random splits use `split_seed`, never the global seed, so they
    stay the same whatever the training seed.

    With `num_folds` K, k-fold cross-validation: the training data (train and val together, never the test split,
    which stays the one of the run without folds) is dealt into K folds with `split_seed`, stratified by class when
    the labels of a classification dataset are known (see below): each fold holds each class's items
    to within one. Fold `fold` is the validation split, the other K - 1 train; `val_fraction` is then not used.

    Image data (items whose input is a C x H x W tensor) gets the transforms below; augmentation touches the
    training split only. A dataset whose constructor takes `transform` (torchvision's style) is given one that
    turns what it opened (a PIL image, an array) into such a tensor, and the rest follows (`data/_torchvision_style`).

    Data that fits in memory (items that are an input tensor and a target, up to 2 GiB in all: the line, MNIST,
    CIFAR-10, any tensor dataset) is by default held as tensors, transformed once, and served a whole batch at a
    time by indexing (`InMemorySplit`): no per-item `__getitem__`, transform and collation at every step. The
    order, seeding, augmentation and DDP sharding are those of the per-item path run in the main process; that
    path serves everything else, through DataLoader workers.

    Items may be `(input, target)` pairs, longer tuples or dicts: `input_key` and `target_key` say which parts are
    the input and the target, found by their names when unset (the rule is in `outputs_and_items`).

    After `setup`, `example` is one item as the model sees it in evaluation, `dims` describes the data for the
    model (see `data_contract.data_dims`) and `classes` holds the class names of a classification dataset: its
    `classes` attribute, or "0" to "C-1" when its targets are integers, the class indices
    (`data_contract.classes_from_targets`). Checkpoints of `fit` record what prediction on new data needs (the class
    names, the input's shape, the images' channels, size and normalisation), so that `predict_path` works from a
    checkpoint alone (`data/_new_inputs`). Data a model cannot learn from is a DataError naming what is wrong: a
    single class, a training split of one class (seen when the labels are known: from a `targets` or `labels`
    attribute, a label per item, or from the items read for lack of a `classes` attribute), images that are not of
    one size once resized.

    Args:
        dataset: Dataset file in `data/`, without `.py`.
        dataset_args: Constructor arguments of that dataset (on the command line: `--data.dataset_args.NAME VALUE`).
        val_fraction: Share of the training data held out for validation (without folds).
        test_fraction: Share held out for testing; only for datasets without a test split of their own
            (default 0.2 for them).
        split_seed: Seed of the random splits and of the folds.
        num_folds: Split the training data into this many folds for cross-validation (see above); null for none.
        fold: The fold that is the validation split, 0 to num_folds - 1 (with num_folds only).
        batch_size: Samples per batch.
        in_memory: `auto` holds the data as tensors when it can and fits, `cpu` always does (an error if it
            cannot), `device` holds it on the training device (a GPU: no copy per batch), `off` serves it item
            by item.
        num_workers: Loader worker processes (0 loads in the main process); null for 0 with data in memory, else
            one per CPU core but one, up to 8.
        pin_memory: Page-locked host memory, for faster copies to a GPU; null for on when training on a GPU.
        persistent_workers: Keep workers alive between epochs (needs num_workers > 0); null for on with workers.
        resize: Resize images to [height, width] (or [size] for the shorter side); null keeps their size.
        normalize: Normalise image channels with the dataset's `mean`/`std` attributes (0.5 when it has none).
        random_crop_padding: Augment: pad training images by this many pixels and crop back at random.
        horizontal_flip: Augment: flip training images left-right at random.
        input_key: For items that are dicts, the key of the input; null finds it by name (image, img, x, input...).
        target_key: For items that are dicts, the key of the target; null finds it by name (label, labels, target...).
        predict_path: For `predict` with a checkpoint: a folder of images (searched recursively) or a file of feature
            rows (.csv, .npy, .pt) to predict on, prepared as the training data was; null predicts the test split.
        top_k: For `predict` with a classifier: how many of the most probable classes predictions.csv lists per item.
        group_batches: Serve this many batches per training step of the Lightning loop, for small models, whose
            step costs about what Lightning's per-step machinery does: the model takes one optimizer step per batch,
            so the same batches in the same order give the same steps and weights as with 1, and Lightning's
            per-step cost is paid once per group. Data held in memory only (`in_memory`). Lightning's own counts
            of batches (log_every_n_steps, an int val_check_interval, limit_train_batches, the logged step axis)
            then count groups; trainer.max_steps and checkpoints' step counts stay optimizer steps.
    """

    def __init__(
        self,
        dataset: str = "line",
        dataset_args: dict[str, Any] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float | None = None,
        split_seed: int = 42,
        num_folds: int | None = None,
        fold: int | None = None,
        batch_size: int = 32,
        in_memory: Literal["auto", "cpu", "device", "off"] = "auto",
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        resize: list[int] | None = None,
        normalize: bool = True,
        random_crop_padding: int | None = None,
        horizontal_flip: bool = False,
        input_key: str | None = None,
        target_key: str | None = None,
        predict_path: str | None = None,
        top_k: int = 1,
        group_batches: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_plain(dict(self.hparams), "data")
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
        if num_folds is None and fold is not None:
            raise ConfigError(f"data.fold {fold} needs data.num_folds (the number of folds it is one of)")
        if num_folds is not None and num_folds < 2:
            raise ConfigError(f"data.num_folds must be >= 2 (or null for no folds), got {num_folds}")
        if num_folds is not None and not (fold is not None and 0 <= fold < num_folds):
            raise ConfigError(f"data.fold must be one of 0 to {num_folds - 1} (data.num_folds {num_folds}), got {fold}")
        if batch_size < 1 or (num_workers or 0) < 0:
            raise ConfigError(f"data.batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if persistent_workers and not num_workers:
            raise ConfigError("data.persistent_workers needs data.num_workers > 0")
        if in_memory not in ("auto", "cpu", "device", "off"):
            raise ConfigError(f"data.in_memory must be auto, cpu, device or off, got {in_memory!r}")
        if in_memory == "device" and (num_workers or pin_memory):
            raise ConfigError(
                "data.in_memory device serves batches from the device in the main process: remove data.num_workers "
                "and data.pin_memory"
            )
        if resize is not None and (len(resize) not in (1, 2) or min(resize) < 1):
            raise ConfigError(f"data.resize must be [height, width] or [size] with positive sizes, got {resize}")
        if random_crop_padding is not None and random_crop_padding < 0:
            raise ConfigError(f"data.random_crop_padding must be >= 0, got {random_crop_padding}")
        if top_k < 1:
            raise ConfigError(f"data.top_k must be >= 1, got {top_k}")
        if group_batches < 1:
            raise ConfigError(f"data.group_batches must be >= 1, got {group_batches}")
        if group_batches > 1 and in_memory == "off":
            raise ConfigError(
                f"data.group_batches {group_batches} needs the training data in memory: use data.in_memory auto, cpu "
                "or device, or data.group_batches 1"
            )
        # A torchvision-style dataset gets the transform that makes tensors of its images (see _torchvision_style).
        self._dataset_args = transform_arguments(self.dataset_class, dataset_args or {}, dataset)
        self.batch_size = batch_size  # an attribute, so that Lightning's batch-size finder can set it
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.example: tuple[Any, Any] | None = None
        self.dims: dict[str, Any] = {}
        self.classes: list[str] | None = None
        self._labels: torch.Tensor | None = None  # a classification dataset's class index per item, when known
        # Image transforms in three parts: resizing, augmentation (training only) and normalisation.
        self._image_steps: tuple[list[Callable], list[Callable], list[Callable]] | None = None
        self._one_size: OneSize | None = None  # resizes images and checks that they then batch
        self._in_memory: dict[str, InMemorySplit] = {}
        self._sampler: EpochShuffle | None = None  # the training order
        self._resume: dict[str, int] | None = None  # the place in it a checkpoint recorded
        # With group_batches > 1: the epoch and the items of it that optimizer steps were taken on (`count_trained`).
        self._trained: tuple[int, int] = (0, 0)
        self._group_cut = False  # whether trainer.max_steps stopped training within the last group
        self._trained_on: dict[str, Any] | None = None  # what prediction on new data needs (`_new_inputs.describe`)
        self._new_inputs: Dataset | None = None  # what `predict_path` holds, read once

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> DInterface:
        """Lightning's, for a checkpoint that holds plain values and tensors only (see `trust.load_checkpoint`)."""
        kwargs = checked_load_arguments(checkpoint_path, hparams_file, weights_only, kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, weights_only=True, **kwargs)

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        if self.hparams.get("predict_path") is not None:
            if stage != "predict":
                raise ConfigError("data.predict_path is for the predict subcommand: remove it")
            return  # the training data is not needed, and may be gone: see `predict_set`
        what = f"dataset {self.hparams.dataset!r}"
        args, transform = self._dataset_args
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        val = self.hparams.val_fraction
        if self.has_test_split:
            pool = self._pairs(construct(self.dataset_class, what, "data.dataset_args", args, train=True, **transform))
            self.test_set = self._pairs(
                construct(self.dataset_class, what, "data.dataset_args", args, train=False, **transform)
            )
            self.train_set, self.val_set = random_split(pool, [1 - val, val], generator=generator)
        else:
            pool = self._pairs(construct(self.dataset_class, what, "data.dataset_args", args, **transform))
            test = self.test_fraction
            self.train_set, self.val_set, self.test_set = random_split(
                pool, [1 - val - test, val, test], generator=generator
            )
        if len(pool):
            self.classes = getattr(pool, "classes", None)
            if self.classes is not None:
                self._labels = class_labels(pool)
            else:
                self.classes, self._labels = classes_from_targets(pool, self.hparams.dataset)
        if self.hparams.num_folds is not None:
            self.train_set, self.val_set = self._fold_splits(pool)
        for name, split in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)):
            if len(split) == 0:
                raise ConfigError(
                    f"the {name} split of {self.hparams.dataset!r} is empty ({len(pool)} items in the pool): "
                    "use more data or change data.val_fraction / data.test_fraction"
                )
        self.dataset = pool
        if self.classes is not None:
            self._check_classes()
        x, y = pool[0]
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            self._image_steps = self._image_transforms(x)
            resize, augment, normalize = self._image_steps
            resized = _compose(resize) if resize else None
            first = resized(x) if resized is not None else x
            size = self._one_size = OneSize(resized, first.shape, item_name(pool, 0), self.hparams.resize)
            train_transform, eval_transform = _compose(augment + normalize), _compose(normalize)
            self.train_set = TransformedDataset(self.train_set, train_transform, size)
            self.val_set = TransformedDataset(self.val_set, eval_transform, size)
            self.test_set = TransformedDataset(self.test_set, eval_transform, size)
            x = eval_transform(first)
        elif self.hparams.resize or self.hparams.random_crop_padding is not None or self.hparams.horizontal_flip:
            raise ConfigError(
                f"data.resize, random_crop_padding and horizontal_flip are for images (C x H x W tensors); "
                f"{self.hparams.dataset!r} gives inputs of shape {list(getattr(x, 'shape', []))}"
            )
        self.example = (x, y)  # one item as the model sees it in evaluation
        self.dims = data_dims(self.example, self.classes)
        normalize = self._image_steps[2] if self._image_steps is not None else []
        mean, std = (normalize[0].mean, normalize[0].std) if normalize else (None, None)
        self._trained_on = describe(x, self.classes, mean, std)

    def _pairs(self, dataset: Dataset) -> Dataset:
        """`dataset` with its items as (input, target) pairs (see `outputs_and_items`)."""
        if len(dataset) == 0:
            return dataset
        hp = self.hparams
        keys = item_keys(dataset[0], hp.dataset, hp.get("input_key"), hp.get("target_key"))
        return dataset if keys is None else ItemPairs(dataset, keys)

    def _check_classes(self) -> None:
        """Raise a DataError unless the dataset has two classes or more, and its training split items of two or
        more (when its labels are known: see the class docstring)."""
        name = self.hparams.dataset
        if len(self.classes) < 2:
            has = f"a single class ({self.classes[0]!r})" if self.classes else "no classes"
            raise DataError(f"dataset {name!r} has {has}: a classifier needs two or more; add data of another class")
        labels = self._labels
        if labels is None:
            return
        seen = set(labels[self.train_set.indices].tolist())
        if len(seen) < 2:
            label = seen.pop()
            shown = self.classes[label] if 0 <= label < len(self.classes) else label
            raise DataError(
                f"the training split of dataset {name!r} holds class {shown!r} alone ({len(self.train_set)} items): a "
                "classifier learns nothing from one class; add training data of other classes"
            )

    def _fold_splits(self, pool: Dataset) -> tuple[Subset, Subset]:
        """The training and validation splits of fold `fold` of `num_folds`, from the items of `pool` outside the test
        split (see the class docstring)."""
        k, fold = self.hparams.num_folds, self.hparams.fold
        items = torch.tensor(sorted([*self.train_set.indices, *self.val_set.indices]), dtype=torch.long)
        if k > len(items):
            raise ConfigError(
                f"data.num_folds {k}: the training data of {self.hparams.dataset!r} has {len(items)} items, fewer than "
                "the folds; use fewer folds"
            )
        folds = fold_of_items(items, self._labels, k, self.hparams.split_seed)  # stratified when classifying
        return Subset(pool, items[folds != fold].tolist()), Subset(pool, items[folds == fold].tolist())

    def _image_transforms(self, image: torch.Tensor) -> tuple[list[Callable], list[Callable], list[Callable]]:
        """The resizing, augmentation and normalisation steps: training applies all three, evaluation no
        augmentation."""
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
        return resize, augment, normalize

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        devices = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        served = self._served("train")
        # A split held in memory with no augmentation makes no random draws per item: plain indices, no seeds.
        draws = not (isinstance(served, InMemorySplit) and served.transform is None)
        self._sampler = EpochShuffle(self.train_set, torch.initial_seed(), *devices, draws=draws)
        self._trained, self._group_cut = (0, 0), False
        if self._resume is not None:
            epoch, items = self._resume["epoch"], self._resume["items"]
            self._sampler.resume(epoch, items)
            self._trained = (epoch, items) if items < self._sampler.num_samples else (epoch + 1, 0)
            self._resume = None
        group = self.group_batches
        if group > 1 and not isinstance(served, InMemorySplit):
            raise ConfigError(
                f"data.group_batches {group} needs the training data in memory, and {self._not_in_memory()}: use "
                "data.group_batches 1"
            )
        # Its own generator: a loader drawing its workers' base seed from the global one would shift dropout's draws.
        generator = torch.Generator().manual_seed(torch.initial_seed())
        return self._loader(served, sampler=self._sampler, generator=generator, batch_size=group * self.batch_size)

    @property
    def group_batches(self) -> int:
        """How many batches the training loader serves per Lightning step (see the option)."""
        return self.hparams.get("group_batches", 1)

    def optimizer_steps(self, groups: int) -> int:
        """The optimizer steps (batches of `batch_size`) in the first `groups` groups of an epoch of the training
        loader."""
        return min(groups * self.group_batches, math.ceil(len(self._sampler) / self.batch_size))

    def count_trained(self, items: int, cut: bool = False) -> None:
        """Record that an optimizer step was taken on the next `items` of the epoch's order (with group_batches > 1,
        where Lightning's count of batches counts groups); `cut` when trainer.max_steps stops training within the
        group. Checkpoints record the place in the order from this."""
        epoch, done = self._trained
        if epoch != self._sampler.epoch:
            epoch, done = self._sampler.epoch, 0
        self._trained = (epoch, done + items)
        self._group_cut = cut

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: what prediction on new data needs to know of the training data (`trained_on`), and
        where training is in the epoch's order, so that a run resumed mid-epoch goes on with the items the
        interrupted run had not reached, in the same order."""
        state: dict[str, Any] = {"trained_on": self._trained_on} if self._trained_on is not None else {}
        trainer = self.trainer
        if self._sampler is None or trainer is None or trainer.state.fn != "fit":
            return state
        if self.group_batches > 1:
            epoch, items = self._trained
            items = items if epoch == self._sampler.epoch else 0
            grouped = {"group_batches": self.group_batches, **({"group_cut": True} if self._group_cut else {})}
            return {**state, "epoch": self._sampler.epoch, "items": items, **grouped}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # batches whose step has run
        return {**state, "epoch": self._sampler.epoch, "items": done * self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        position = {key: state_dict[key] for key in ("epoch", "items") if key in state_dict}
        group = state_dict.get("group_batches", 1)
        if (
            set(state_dict) - {"epoch", "items", "trained_on", "group_batches", "group_cut"}
            or len(position) == 1
            or not all(type(value) is int and 0 <= value < 2**62 for value in position.values())
            or type(group) is not int
            or group < 1
            or state_dict.get("group_cut", True) is not True
        ):
            raise ConfigError(
                f"the checkpoint's place in the training order ({shown(state_dict)}) is not an epoch and a number of "
                "items (beside the record of the training data); it was not written by this template: give another "
                "checkpoint"
            )
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"  # to test or predict, any will do
        if position and fitting and group != self.group_batches:
            # Lightning counts the steps of grouped batches in its manual optimization's progress, the others in its
            # automatic optimization's, and the batches of an epoch in groups: a run cannot carry on with another K.
            raise ConfigError(
                f"the checkpoint was written by training with data.group_batches {group}: resume it with "
                f"--data.group_batches {group} (not {self.group_batches})"
            )
        if "group_cut" in state_dict and fitting:
            raise ConfigError(
                f"the checkpoint was written when trainer.max_steps stopped training within a group of "
                f"data.group_batches {group} batches, which Lightning counts as done: resuming it would skip the rest "
                "of that group. Resume one written at the end of a group (an epoch's end, an interruption), or stop "
                "at a trainer.max_steps that ends a group"
            )
        if "trained_on" in state_dict:
            record = check_description(state_dict["trained_on"], "the checkpoint")
            self._trained_on = self._trained_on or record  # data set up here describes itself
        if position:
            self._resume = position

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._served("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._served("test"))

    @property
    def predict_set(self) -> Dataset | None:
        """What `predict` runs on: the images or rows of `predict_path` when set (read once, once the checkpoint is
        loaded), else the test split."""
        path = self.hparams.get("predict_path")
        if path is None:
            return self.test_set
        if self._new_inputs is None:
            if self._trained_on is None and not (self.trainer is not None and self.trainer.ckpt_path):
                raise ConfigError(
                    "data.predict_path needs --ckpt_path: the checkpoint records how the training data was prepared"
                )
            if self._trained_on is None:
                raise ConfigError(
                    "data.predict_path: the checkpoint does not record how its training data was prepared (it was "
                    "written before this template recorded it); train again, or predict on its test split"
                )
            self._new_inputs = new_inputs(path, self._trained_on)
            self.classes = self._trained_on["classes"]
        return self._new_inputs

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set)

    def _loader(
        self,
        dataset: Dataset,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        hp = self.hparams
        in_memory = isinstance(dataset, InMemorySplit)
        workers = hp.num_workers if hp.num_workers is not None else 0 if in_memory else _default_workers()
        on_gpu = self._device().type == "cuda" and not (in_memory and dataset.inputs.is_cuda)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            worker_init_fn=start_worker if workers else None,
            collate_fn=whole_batch if in_memory else None,
            pin_memory=hp.pin_memory if hp.pin_memory is not None else on_gpu,
            persistent_workers=hp.persistent_workers if hp.persistent_workers is not None else workers > 0,
        )

    def _served(self, split: str) -> Dataset:
        """What the `split` loader serves: the split in memory when `in_memory` allows, else item by item."""
        mode = self.hparams.in_memory
        items = SeededItems(self.train_set) if split == "train" else getattr(self, f"{split}_set")
        if mode == "off":
            return items
        if split not in self._in_memory:
            if (reason := self._not_in_memory()) is not None:
                if mode == "auto":
                    return items
                raise ConfigError(f"data.in_memory {mode}: {reason}; use data.in_memory auto or off")
            self._in_memory[split] = self._hold(split)
        return self._in_memory[split]

    def _not_in_memory(self) -> str | None:
        """Why the data cannot be held in memory, or None when it can."""
        name = self.hparams.dataset
        item = self.dataset[0]
        if not tensor_items(item):
            return f"the items of {name!r} are not an input tensor and a target"
        x, y = self.example  # as stored: resized
        size = sum(len(getattr(self, f"{split}_set")) for split in SPLITS)
        needed = size * (torch.as_tensor(x).nbytes + torch.as_tensor(y).nbytes)
        if self.hparams.in_memory == "auto" and needed > AUTO_LIMIT_BYTES:
            return f"{name!r} takes {needed / 1024**3:.1f} GiB as tensors"
        return None

    def _hold(self, split: str) -> InMemorySplit:
        """The split as tensors, resized and, when not augmented, normalised once; on the device if asked."""
        items = getattr(self, f"{split}_set")
        transform = None
        if self._image_steps is None:
            inputs, targets = stack_items(items)
        else:
            _, augment, normalize = self._image_steps

            def per_item(x: torch.Tensor, index: int) -> torch.Tensor:
                return self._one_size(x, items.dataset, index)

            if split == "train" and augment:
                inputs, targets = stack_items(items.dataset, per_item)  # the untransformed items, resized
                transform = _compose(augment + normalize)
            else:
                inputs, targets = stack_items(items.dataset, per_item, _compose(normalize) if normalize else None)
        device = self._device() if self.hparams.in_memory == "device" else torch.device("cpu")
        return InMemorySplit(inputs.to(device), targets.to(device), items, transform)

    def _device(self) -> torch.device:
        """The device this process trains on (the CPU before a trainer is attached)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")


def fold_of_items(items: torch.Tensor, labels: torch.Tensor | None, k: int, seed: int) -> torch.Tensor:
    """The fold, 0 to k - 1, of each of `items` (indices into a dataset whose class indices are `labels`, or None).

    The items are shuffled with `seed` and dealt to the folds in turn, one class after another when the labels are
    known, so each fold has each class's items to within one (stratified) and the folds' sizes differ by one at most.
    """
    generator = torch.Generator().manual_seed(seed)
    order = items[torch.randperm(len(items), generator=generator)]
    if labels is not None:
        # A stable sort by class keeps the shuffled order within each class.
        order = order[torch.sort(labels[order], stable=True).indices]
    folds = torch.empty(len(items), dtype=torch.long)
    position = torch.searchsorted(items, order)  # where each dealt item sits in `items`
    folds[position] = torch.arange(len(items)) % k
    return folds


def start_worker(worker_id: int) -> None:
    """Set up a loader worker: it leaves a SIGTERM sent to the whole job (as SLURM sends it) to the main process,
    which stops at the next step and then ends its workers; a worker ended by it would be a crash. Then Lightning's
    own worker seeding, which a loader with a `worker_init_fn` of its own does not get."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)


def _default_workers() -> int:
    """Loader workers for data served item by item: one per CPU core this process may use but one, up to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(1, cores - 1))


def _compose(transforms: list[Callable]) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose(transforms) if transforms else v2.Identity()


class OneSize:
    """Resizes an image as data.resize says (`resize`, None for no resizing), and checks that it then has `shape`,
    that of the dataset's first image (`first` names it): images batch only at one size. Before augmentation, which
    could crop images of any size to one and so hide the difference."""

    def __init__(self, resize: Callable | None, shape: torch.Size, first: str, setting: list[int] | None) -> None:
        self.resize, self.shape, self.first, self.setting = resize, shape, first, setting

    def __call__(self, image: torch.Tensor, dataset: Dataset, index: int) -> torch.Tensor:
        """`image`, item `index` of `dataset`, resized; a DataError naming its file when it has another size."""
        if self.resize is not None:
            image = self.resize(image)
        if image.shape == self.shape:
            return image
        name = item_name(dataset, index)
        if image.shape[0] != self.shape[0]:
            raise DataError(
                f"image {name} has {image.shape[0]} channels but {self.first} has {self.shape[0]}: give the images "
                "one number of channels (all RGB or all grayscale)"
            )
        after = f" after data.resize {self.setting}, which sets the shorter side only," if self.setting else ""
        height, width = self.shape[1:]
        raise DataError(
            f"images of different sizes: {name} is {_size(image.shape)} but {self.first} is {_size(self.shape)}"
            f"{after} and a batch needs one size; set --data.resize [{height}, {width}] (height, width)"
        )


def _size(shape: torch.Size) -> str:
    return "x".join(map(str, shape[1:]))


class TransformedDataset(Dataset):
    """`dataset` with `transform` applied to each item's input; one per split, so augmentation stays in training.
    With `size`, images are first resized and checked to be of one size (see OneSize)."""

    def __init__(self, dataset: Dataset, transform: Callable, size: OneSize | None = None) -> None:
        self.dataset, self.transform, self.size = dataset, transform, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x, y = self.dataset[index]
        return self._transformed(x, index), y

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """Many items at once, through the dataset's own `__getitems__` when it has one (Subset forwards it)."""
        items = fetch_items(self.dataset, indices)
        return [(self._transformed(x, i), y) for i, (x, y) in zip(indices, items, strict=True)]

    def _transformed(self, x: Any, index: int) -> Any:
        return self.transform(self.size(x, self.dataset, index) if self.size is not None else x)


def _source(dataset: Dataset, indices: list[int]) -> tuple[Dataset, list[int]]:
    """The dataset that a split's items at `indices` come from, and their indices in it."""
    while isinstance(dataset, (TransformedDataset, Subset, InMemorySplit, SeededItems, ItemPairs)):
        if isinstance(dataset, Subset):
            indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _file_names(dataset: Dataset) -> list[str | Path] | None:
    """The file of each item, when the dataset reads files (a `files` list, or `images` naming files)."""
    names = getattr(dataset, "files", None) or getattr(dataset, "images", None)
    if isinstance(names, list) and names and len(names) == len(dataset) and isinstance(names[0], (str, Path)):
        return names
    return None


def item_name(dataset: Dataset, index: int) -> str:
    """For messages: the file that item `index` of a split was read from (inside the dataset's `folder` if it has
    one), else its index in the dataset."""
    source, (index,) = _source(dataset, [index])
    names = _file_names(source)
    if names is None:
        return f"item {index} of {type(source).__name__}"
    folder = getattr(source, "folder", None)
    return str(Path(folder, names[index]) if isinstance(folder, (str, Path)) else names[index])


def item_ids(dataset: Dataset) -> list[str]:
    """An id per item of a split, for prediction files: its file name when the dataset reads files, else its index
    in the dataset it was split from."""
    source, indices = _source(dataset, list(range(len(dataset))))
    names = _file_names(source)
    return [str(names[i]) if names is not None else str(i) for i in indices]
