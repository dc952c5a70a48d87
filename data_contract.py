"""What the data tells the model: the contract by which a dataset sizes the network that learns from it.

1. The data module describes its data in `dims` (`data_dims`): features per input, outputs per item, and the
   number of classes, image channels and image size where the data has them.
2. A network's constructor parameters named in `DATA_DIMS` are its size parameters. The command line leaves them
   unset (`size_defaults`) and the model fills them in from `dims` (`sized_net_args`); a size set by hand must
   agree with the data.
3. A dataset classifies when it has a `classes` attribute (the class names), or when its targets are integers, the
   class indices: then the number of classes is the largest target + 1, read from its `targets` or `labels` attribute
   (a class index per item) or else from one pass over its items (`classes_from_targets`). A printed line says which.
4. The loss follows the data when `model.loss` is not set (`loss_for`): CrossEntropyLoss for data with classes, or
   NLLLoss when the network's outputs are log-probabilities (it ends with `log_softmax`: the exp of each output row
   sums to 1); L1Loss for data without classes (regression). A printed line says which.
5. Before training, one example runs through the network (`check_fits`) and the loss must suit the data and the
   network (`check_task`): a mismatch is one clear line, not a crash mid-epoch.
6. Checkpoints record the shape of one input (`record_input_shape`), from which `input_shape` gives export the
   shape to trace any network with, whatever its constructor takes.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import Dataset

from outputs_and_items import prediction
from trust import shown
from utils import ConfigError, DataError

# Constructor parameters of a network that the data fills in when they are not set.
DATA_DIMS = ("input_size", "output_size", "num_classes", "in_channels", "image_size")
# The checkpoint entry holding one input's shape, without the batch axis.
INPUT_SHAPE_KEY = "example_input_shape"
# The largest input shape taken from a checkpoint or the command line (a 3 x 8192 x 8192 image is 2e8 values): a
# crafted checkpoint could ask for more memory than there is.
MAX_INPUT_AXES = 8
MAX_EXAMPLE_VALUES = 2**28


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


def class_labels(dataset: Dataset) -> torch.Tensor | None:
    """The class index of each item, when the dataset lists them in `targets` or `labels` (read without reading the
    items); None otherwise, or when they are not class indices."""
    labels = getattr(dataset, "targets", None)
    labels = getattr(dataset, "labels", None) if labels is None else labels
    if labels is None or len(labels) != len(dataset):
        return None
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError):
        return None
    return None if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool else labels


def is_class_index(target: Any) -> bool:
    """Whether a target is a class index: an integer (a Python or NumPy int, or an integer tensor of one value)."""
    if isinstance(target, torch.Tensor):
        return target.dim() == 0 and not target.is_floating_point() and target.dtype != torch.bool
    return isinstance(target, numbers.Integral) and not isinstance(target, bool)


def classes_from_targets(dataset: Dataset, name: str) -> tuple[list[str] | None, torch.Tensor | None]:
    """The class names ("0" to "C-1") and each item's label, for `dataset` (named `name`), whose items are (input,
    target) pairs and which has no `classes` attribute; (None, None) when its targets are not class indices.

    The labels are its `targets` or `labels` attribute (a class index per item) when it has one; else, when the first
    item's target is a class index, the targets of all its items, read once. Prints one line saying which. A target
    that is a string, or a negative one, is a DataError saying to add `classes`.
    """
    labels = class_labels(dataset)
    if labels is not None:
        attribute = "targets" if getattr(dataset, "targets", None) is not None else "labels"
        told = f"from its `{attribute}`"
    else:
        target = dataset[0][1]
        if isinstance(target, str):
            raise DataError(
                f"the targets of {name!r} are strings ({target!r}): give the dataset a `classes` attribute (the class "
                "names) and return the index of the item's class as its target"
            )
        if not is_class_index(target):
            return None, None
        targets = []
        for index in range(len(dataset)):
            target = dataset[index][1]
            if not is_class_index(target):
                raise DataError(
                    f"item {index} of {name!r} has the target {shown(target)}, but the first item's is a class index: "
                    "give every item a class index (an integer) as its target"
                )
            targets.append(int(target))
        labels = torch.tensor(targets)
        told = f"read from its {len(dataset)} items (a `targets` list skips this)"
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(
            f"the targets of {name!r} hold {low}, but a class index runs from 0 to the number of classes - 1: give "
            "the dataset a `classes` attribute (the class names) and targets that index it"
        )
    say(f"Dataset {name!r} has no `classes`: {high + 1} classes (labels {low} to {high}) {told}")
    return [str(label) for label in range(high + 1)], labels


def size_parameters(net_class: type) -> list[str]:
    """The size parameters (`DATA_DIMS`) that the constructor of `net_class` takes."""
    parameters = inspect.signature(net_class).parameters
    return [name for name in DATA_DIMS if name in parameters]


def size_defaults(net_class: type) -> dict[str, None]:
    """Parser defaults that leave the size parameters of `net_class` unset for the data to fill in, e.g.
    {"model.net_args.num_classes": None, "model.net_args.in_channels": None} for a conv net."""
    return {f"model.net_args.{name}": None for name in size_parameters(net_class)}


def unset_sizes(net_class: type, net_args: Mapping[str, Any]) -> list[str]:
    """The size parameters of `net_class` that `net_args` leaves unset: the network waits for the data."""
    return [name for name in size_parameters(net_class) if net_args.get(name) is None]


def sized_net_args(
    net_class: type, net_args: Mapping[str, Any], dims: Mapping[str, Any], *, net: str, data: str
) -> dict[str, Any]:
    """`net_args` with the size parameters it leaves unset taken from `dims`, the data's description.

    A size set by hand that the data contradicts, or one the data does not give, is a ConfigError saying what to
    change; `net` and `data` name the model file and the dataset in it.
    """
    for name in DATA_DIMS:
        given = net_args.get(name)
        if name in dims and given is not None and given != dims[name]:
            raise ConfigError(
                f"model.net_args.{name} is {given} but the data ({data}) has {dims[name]}: remove the setting, "
                "it is taken from the data"
            )
    unset = unset_sizes(net_class, net_args)
    missing = [name for name in unset if name not in dims]
    if missing:
        fix = f"set --model.net_args.{missing[0]}"
        if missing[0] == "num_classes" and dims:
            fix = (
                f"its targets are not class indices; to classify, give the dataset ({data}) a `classes` attribute (the "
                "class names) and integer targets 0 to C-1"
            )
        raise ConfigError(f"model {net!r} needs {', '.join(missing)}, which the data does not give: {fix}")
    return {**net_args, **{name: dims[name] for name in unset}}


def log_probabilities(output: torch.Tensor) -> bool:
    """Whether a network's output (a batch of one item or more) holds log-probabilities, as a net ending with
    `log_softmax` gives: per item, outputs of at most 0 whose exps sum to 1."""
    if output.dim() != 2 or output.shape[1] < 2 or not output.is_floating_point():
        return False
    total = output.double().exp().sum(dim=1)
    return bool((output <= 0).all() and torch.allclose(total, torch.ones_like(total), atol=1e-3))


def loss_for(dims: Mapping[str, Any], log_probs: bool, *, net: str, data: str) -> str:
    """The loss that follows the data, for a model whose `loss` is not set, and a printed line saying why:
    CrossEntropyLoss for data with classes, NLLLoss when the network `net` also gives log-probabilities (`log_probs`),
    L1Loss for data without classes."""
    if "num_classes" not in dims:
        why = f"the data ({data}) has no classes: regression" if dims else "no data module describes the data"
        loss = "L1Loss"
    elif log_probs:
        classes = dims["num_classes"]
        loss, why = "NLLLoss", f"the data ({data}) has {classes} classes and model {net!r} gives log-probabilities"
    else:
        loss, why = "CrossEntropyLoss", f"the data ({data}) has {dims['num_classes']} classes"
    say(f"Loss {loss}: {why} (--model.loss sets another)")
    return loss


def check_task(
    classification: bool, loss: str, dims: Mapping[str, Any], data: str, *, log_probs: bool = False, net: str = ""
) -> None:
    """A ConfigError unless the loss suits the data and the network `net`: a classification loss for data with
    classes, a regression loss for data without, and NLLLoss for log-probabilities only (`log_probs`, see
    `log_probabilities`)."""
    if classification and "num_classes" not in dims:
        raise ConfigError(
            f"loss {loss} classifies, but the data ({data}) has no classes: its targets are not class indices; to "
            "classify, give the dataset a `classes` attribute (the class names) and integer targets 0 to C-1"
        )
    if not classification and "num_classes" in dims:
        fix = f"NLLLoss, as model {net!r} gives log-probabilities" if log_probs else "CrossEntropyLoss"
        raise ConfigError(
            f"the data ({data}) has {dims['num_classes']} classes but loss {loss} is a regression loss: use {fix}, or "
            "leave model.loss unset to follow the data"
        )
    if loss == "NLLLoss" and not log_probs:
        raise ConfigError(
            f"loss NLLLoss takes log-probabilities, but model {net!r} gives other scores: use CrossEntropyLoss, or end "
            "the network with log_softmax"
        )


def check_fits(net: nn.Module, batch: torch.Tensor, output_size: int, *, name: str) -> torch.Tensor:
    """Run `batch`, one of the data's inputs with a batch axis, through `net` (model file `name`), and return its
    prediction (see `outputs_and_items`): a ConfigError when the network cannot take it or gives another number of
    outputs per item than `output_size`."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            # `forward`, not a call, which would compile a compiled net for this one evaluation.
            out = prediction(net.forward(batch), name)
    except RuntimeError as error:
        raise ConfigError(
            f"model {name!r} cannot take the data's inputs of shape {list(batch.shape[1:])}: {error}"
        ) from error
    finally:
        net.train(training)
    if out.shape[1:].numel() != output_size:
        raise ConfigError(
            f"model {name!r} gives {out.shape[1:].numel()} outputs per item but the data needs {output_size}: check "
            "its size arguments (--model.net_args.*)"
        )
    return out


@rank_zero_only
def say(line: str) -> None:
    """Print a line once, not once per device."""
    print(line, flush=True)


def record_input_shape(checkpoint: dict[str, Any], example: torch.Tensor) -> None:
    """Keep the shape of one input in `checkpoint`, from `example`, a batch of the data the network saw."""
    checkpoint[INPUT_SHAPE_KEY] = list(example.shape[1:])


def input_shape(net_args: Mapping[str, Any] | None, shape: Any = None) -> list[int] | None:
    """One input's shape without the batch axis, for tracing the network: `shape` when given (by the user, or as
    a checkpoint recorded it), else what the size parameters in `net_args` tell, for checkpoints from before the
    record: `in_channels` with `image_size` an image [C, H, W], `input_size` a flat [input_size]. None when nothing
    tells, as for a conv net that takes images of any size and keeps only `in_channels`.

    A shape that is not 1 to `MAX_INPUT_AXES` sizes >= 1, or that holds more than `MAX_EXAMPLE_VALUES` values, is a
    ConfigError, before anything is allocated for it.
    """
    net_args = net_args if isinstance(net_args, Mapping) else {}
    if shape is not None:
        shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
    elif net_args.get("in_channels") is not None and net_args.get("image_size") is not None:
        size = net_args["image_size"]
        shape = [net_args["in_channels"], *([size, size] if isinstance(size, int) else size)]
    elif net_args.get("input_size") is not None:
        shape = [net_args["input_size"]]
    else:
        return None
    if not 0 < len(shape) <= MAX_INPUT_AXES or not all(type(size) is int and size >= 1 for size in shape):
        got = ", ".join(shown(size) for size in shape[:MAX_INPUT_AXES])
        if len(shape) > MAX_INPUT_AXES:
            got += ", ..."
        raise ConfigError(
            f"input_shape must be one input's sizes, 1 to {MAX_INPUT_AXES} integers >= 1 (no batch axis), got [{got}]"
        )
    if math.prod(shape) > MAX_EXAMPLE_VALUES:
        raise ConfigError(f"input_shape {shape} is more than {MAX_EXAMPLE_VALUES:,} values for one input: too large")
    return shape
