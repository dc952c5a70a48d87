"""Code from elsewhere, taken as it is: which part of a network's output is its prediction, and which parts of a
dataset's item are the input and the target.

Outputs. A network's `forward` may return:

- a tensor: the prediction;
- a dict (or any mapping, such as a Hugging Face `ModelOutput`): the value of the first of the keys
  `PREDICTION_KEYS` (logits, out, output, prediction, pred, y_hat) that it has;
- a dataclass-like object or a named tuple: its first attribute of those names;
- a tuple or list, as `(logits, features)`: its first element.

The rule applies again to what it picks, so `((logits, aux), features)` gives `logits`. The loss, the metrics,
predictions.csv and the model check before training all see the prediction alone; the rest of the output (features,
auxiliary heads) is not used. An output the rule cannot read (a dict without any of those keys, a string) is one error
naming the model and what it returned.

Items. A dataset's `__getitem__` may return:

- `(input, target)`: as it is; a longer tuple or list, `(input, target, ...)`, gives its first two elements;
- a dict: the input is `data.input_key` and the target `data.target_key` when set, else the first of the keys
  `INPUT_KEYS` (image, img, x, input, inputs, data, features) and of `TARGET_KEYS` (label, labels, target, targets, y,
  class) that the item has.

Items of any other form, or dicts in which no key is found, are one error naming the dataset and its keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from utils import ConfigError, DataError

PREDICTION_KEYS = ("logits", "out", "output", "prediction", "pred", "y_hat")
INPUT_KEYS = ("image", "img", "x", "input", "inputs", "data", "features")
TARGET_KEYS = ("label", "labels", "target", "targets", "y", "class")


def prediction(output: Any, model: str | None = None) -> torch.Tensor:
    """The prediction in what a network returned (see the module's docstring); `model` names the model file in the
    ConfigError raised for an output the rule cannot read."""
    if isinstance(output, torch.Tensor):
        return output
    named = _model(model)
    if isinstance(output, Mapping):
        key = next((key for key in PREDICTION_KEYS if key in output), None)
        if key is None:
            keys = ", ".join(repr(key) for key in output) or "none"
            raise ConfigError(
                f"{named} returns a dict with the keys {keys}, none of which is known as the prediction: name it "
                f"{_either(PREDICTION_KEYS)} in the dict, or return the prediction first in a tuple"
            )
        return prediction(output[key], model)
    field = next((key for key in PREDICTION_KEYS if _has_field(output, key)), None)
    if field is not None:
        return prediction(getattr(output, field), model)
    if isinstance(output, (tuple, list)) and output:
        return prediction(output[0], model)
    what = "an empty tuple" if isinstance(output, (tuple, list)) else f"a {type(output).__name__}"
    raise ConfigError(
        f"{named} returns {what}, not a tensor: return the prediction, or a tuple with the prediction first, or a "
        f"dict with it under {_either(PREDICTION_KEYS)}"
    )


def _model(model: str | None) -> str:
    return f"model {model!r}" if model is not None else "the model"


def _either(names: Sequence[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _has_field(output: Any, name: str) -> bool:
    """Whether `output` is a dataclass or named tuple with a field `name`, or another object with an attribute
    `name` (a plain tuple or list has none)."""
    if dataclasses.is_dataclass(output):
        return name in {field.name for field in dataclasses.fields(output)}
    if isinstance(output, tuple):
        return name in getattr(output, "_fields", ())
    return not isinstance(output, list) and hasattr(output, name)


def item_keys(item: Any, dataset: str, input_key: str | None, target_key: str | None) -> tuple[Any, Any] | None:
    """Where the input and the target are in `item`, the first item of `dataset` (for messages): None for an
    `(input, target)` pair, which needs nothing done; the two keys of a dict; the indices 0 and 1 of a longer tuple.
    A DataError or ConfigError, naming the dataset, for an item that is none of these."""
    if isinstance(item, Mapping):
        keys = ", ".join(repr(key) for key in item)
        found = []
        for role, given, names in (("input", input_key, INPUT_KEYS), ("target", target_key, TARGET_KEYS)):
            if given is not None and given not in item:
                raise ConfigError(f"data.{role}_key {given!r} is not a key of the items of {dataset!r} (keys: {keys})")
            key = given if given is not None else next((name for name in names if name in item), None)
            if key is None:
                raise DataError(
                    f"the items of {dataset!r} are dicts with the keys {keys}, none of which is known as the {role}: "
                    f"set --data.{role}_key to the key of the {role} (known: {', '.join(names)})"
                )
            found.append(key)
        return found[0], found[1]
    if input_key is not None or target_key is not None:
        raise ConfigError(
            f"data.input_key and data.target_key are for items that are dicts; those of {dataset!r} are "
            f"{type(item).__name__}s: remove them"
        )
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return None if len(item) == 2 else (0, 1)
    raise DataError(
        f"the items of {dataset!r} are {type(item).__name__}s: an item must be (input, target), or a dict holding "
        "both (see data.input_key and data.target_key)"
    )


class ItemPairs(Dataset):
    """`dataset` with each item as an `(input, target)` pair: the values of `keys`, the input's and the target's keys
    (or indices) in the items it gives. Attributes it does not have itself (`classes`, `targets`, `mean`, file lists)
    are those of `dataset`."""

    def __init__(self, dataset: Dataset, keys: tuple[Any, Any]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.dataset[index]
        return item[self.keys[0]], item[self.keys[1]]

    def __getattr__(self, name: str) -> Any:
        # Not for `dataset` itself, which is looked up here while an unpickled copy (in a loader worker) has none yet.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
