"""Datasets written in torchvision's style, whose constructor takes `transform` (and `target_transform`): what the
data module gives them.

Such a dataset gets `transform=to_tensor()`, which turns what its `__getitem__` opened (a PIL image, a NumPy array
H x W or H x W x C, a uint8 or float tensor) into a float C x H x W tensor in [0, 1]. Everything after that (resizing,
training-only augmentation, normalisation) is the data module's, applied per split to those tensors: so a validation
split carved from the same dataset object as the training split is never augmented, data held in memory gets the same
pipeline as data served item by item, and a checkpoint records the pipeline as plain options (`--data.resize`,
`--data.normalize`, `--data.random_crop_padding`, `--data.horizontal_flip`) that prediction on new images repeats.

The transforms themselves cannot be given as dataset arguments: a value on the command line or in a config is text,
and text that named code to build would run it (see trust.py). A transform set there is one error saying which data
options to use instead. `target_transform` is left unset: targets are used as the dataset gives them (class indices,
or values for regression).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from trust import shown
from utils import ConfigError

TRANSFORM_ARGS = ("transform", "target_transform")


def to_tensor() -> Callable:
    """torchvision's conversion of a PIL image, a NumPy array or a tensor to a plain float32 C x H x W tensor; integer
    pixels are scaled to [0, 1]."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


def transform_arguments(dataset_class: type, args: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`args` (the dataset arguments of dataset `name`) without the transform arguments, and the transform arguments
    the data module passes: `{"transform": to_tensor()}` when the dataset's constructor takes `transform`, else none.

    A transform set in `args` is a ConfigError naming the data options that do its work.
    """
    parameters = inspect.signature(dataset_class).parameters
    for key in TRANSFORM_ARGS:
        if key in parameters and args.get(key) is not None:
            value = args[key]
            named = shown(value) if isinstance(value, str) else getattr(value, "__name__", type(value).__name__)
            raise ConfigError(
                f"data.dataset_args.{key} {named}: the data module gives dataset {name!r} its {key} (images "
                "to tensors, then --data.resize, --data.normalize, and for training only --data.random_crop_padding "
                "and --data.horizontal_flip); remove it and set those options"
            )
    rest = {key: value for key, value in args.items() if key not in TRANSFORM_ARGS or key not in parameters}
    return rest, ({"transform": to_tensor()} if "transform" in parameters else {})
