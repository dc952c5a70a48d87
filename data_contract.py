"""What the data tells the model: the contract by which a dataset sizes the network that learns from it.

1. The data module describes its data in `dims` (`data_dims`): features per input, outputs per item, and the
   number of classes, image channels and image size where the data has them.
2. A network's constructor parameters named in `DATA_DIMS` are its size parameters. The command line leaves them
   unset (`size_defaults`) and the model fills them in from `dims` (`sized_net_args`); a size set by hand must
   agree with the data.
3. Before training, the loss must suit the data (`check_task`) and one example runs through the network
   (`check_fits`): a mismatch is one clear line, not a crash mid-epoch.
4. Checkpoints record the shape of one input (`record_input_shape`), from which `input_shape` gives export the
   shape to trace any network with, whatever its constructor takes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trust import shown
from utils import ConfigError

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
        raise ConfigError(
            f"model {net!r} needs {', '.join(missing)}, which the data does not give: set --model.net_args.{missing[0]}"
        )
    return {**net_args, **{name: dims[name] for name in unset}}


def check_task(classification: bool, loss: str, dims: Mapping[str, Any], data: str) -> None:
    """A ConfigError unless the loss suits the data: a classification loss for data with classes, a regression
    loss for data without."""
    if classification and "num_classes" not in dims:
        raise ConfigError(
            f"loss {loss} classifies, but the data ({data}) has no classes: use a regression loss such as L1Loss "
            "or MSELoss"
        )
    if not classification and "num_classes" in dims:
        raise ConfigError(
            f"the data ({data}) has {dims['num_classes']} classes but loss {loss} is a regression loss: use "
            "CrossEntropyLoss"
        )


def check_fits(net: nn.Module, batch: torch.Tensor, output_size: int, *, name: str) -> None:
    """Run `batch`, one of the data's inputs with a batch axis, through `net` (model file `name`): a ConfigError
    when the network cannot take it or gives another number of outputs per item than `output_size`."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            # `forward`, not a call, which would compile a compiled net for this one evaluation.
            out = net.forward(batch)
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
