"""Export the trained network of a checkpoint for use without Lightning: a state_dict, TorchScript and ONNX.

    python export.py --ckpt_path runs/mlp/version_0/checkpoints/last.ckpt --out_dir exported
    python export.py --ckpt_path runs/cnn/version_0/checkpoints/last.ckpt --out_dir exported --input_shape 1 28 28

The files hold `model.net` alone: the plain `nn.Module` of `model/<net>.py`, without the LightningModule around it.
`model.pth` loads into that class built with the checkpoint's `net_args`; the TorchScript and ONNX files need no
project code at all. ONNX export needs the `onnx` and `onnxscript` packages, which the project does not require.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import data_contract
from files import make_dir, write_atomically, write_error
from model.model_interface import MInterface
from trust import load_checkpoint
from utils import ConfigError, did_you_mean

__all__ = ["DEFAULT_FORMATS", "FORMATS", "example_input", "export", "load_network", "onnx_missing"]

# Each format's file name in the output directory.
FORMATS = {"state_dict": "model.pth", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
DEFAULT_FORMATS = tuple(FORMATS)
# Formats that trace the network, and so need an input of the right shape.
TRACED = ("torchscript", "onnx")
ONNX_PACKAGES = ("onnx", "onnxscript")
# Above this many bytes of weights, ONNX keeps them in a `model.onnx.data` file next to the graph (protobuf's limit).
ONNX_INLINE_LIMIT = 2**31 - 2**26


def example_input(hparams: Mapping[str, Any], input_shape: Sequence[int] | None = None) -> torch.Tensor | None:
    """A random input batch of one, [1, ...], for tracing the network of a checkpoint with these hyperparameters.

    Its shape is `input_shape` when given (by the user, or as the checkpoint recorded it from its data), else what
    the network's size arguments tell; None when nothing tells (see `data_contract.input_shape`).
    """
    shape = data_contract.input_shape(hparams.get("net_args"), input_shape)
    return None if shape is None else torch.randn(1, *shape)


def onnx_missing() -> list[str]:
    """The packages that ONNX export needs and that are not installed."""
    return [package for package in ONNX_PACKAGES if importlib.util.find_spec(package) is None]


def load_network(
    ckpt_path: str | Path, *, input_shape: Sequence[int] | None = None
) -> tuple[MInterface, torch.Tensor | None]:
    """The checkpoint's model in eval mode on the CPU, and an example input for it: of `input_shape` when given,
    else of the shape the checkpoint recorded from the data it was trained on (see `example_input`).

    The file is read with weights-only unpickling only: one that holds anything but plain data and tensors is
    refused before any of it runs.
    """
    path = Path(ckpt_path)
    checkpoint = load_checkpoint(path)
    if "hyper_parameters" not in checkpoint:
        raise ConfigError(f"--ckpt_path {path}: not a checkpoint of this template (it has no hyper_parameters)")
    input_shape = input_shape or checkpoint.get(data_contract.INPUT_SHAPE_KEY)
    hparams = checkpoint["hyper_parameters"]
    del checkpoint
    try:
        model = MInterface.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError) as error:  # not Lightning's, or its weights do not fit the network it names
        raise ConfigError(f"--ckpt_path {path}: not a checkpoint of this template ({error})") from error
    if model.net is None:
        raise ConfigError(f"--ckpt_path {path}: the checkpoint holds no network (it was saved before training)")
    return model.eval(), example_input(hparams, input_shape)


def export(
    ckpt_path: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Path]:
    """Write the checkpoint's network into `out_dir` (created) in each of `formats`; returns {format: file}. A folder
    or file that cannot be written (a full disk, a file named `out_dir`) is a `files.WriteError` naming it.

    `state_dict` is `model.pth` (`torch.save(net.state_dict())`), `torchscript` is `model.torchscript.pt`
    (`torch.jit.trace`, or `torch.jit.script` where tracing fails) and `onnx` is `model.onnx`, whose batch axis
    is dynamic. The traced formats need the shape of one input: `input_shape`, e.g. (1, 28, 28) for MNIST images,
    or else the shape of the data the checkpoint's network was trained on, which the checkpoint records.

    ONNX needs the `onnx` and `onnxscript` packages. Without them, "onnx" is an error when asked for, and is
    skipped with a note when it only came with the default formats.
    """
    asked = [formats] if isinstance(formats, str) else list(formats)
    for name in asked:
        if name not in FORMATS:
            raise ConfigError(
                f"unknown export format {name!r}: {did_you_mean(name, DEFAULT_FORMATS)}"
                f"Valid formats: {', '.join(FORMATS)}"
            )
    missing = onnx_missing()
    if "onnx" in asked and missing:
        if formats is not DEFAULT_FORMATS:
            raise ConfigError("ONNX export needs the onnx package: pip install onnx onnxscript")
        print(f"Skipping ONNX export: {' and '.join(missing)} not installed (pip install onnx onnxscript)")
        asked.remove("onnx")
    model, example = load_network(ckpt_path, input_shape=input_shape)
    traced = [name for name in asked if name in TRACED]
    if traced and example is None:
        raise ConfigError(
            f"exporting {' and '.join(traced)} traces the network on an example input, and the checkpoint of "
            f"{model.hparams.net!r} does not give its shape: pass input_shape (--input_shape C H W), "
            "or export state_dict alone"
        )
    out = Path(out_dir)
    make_dir(out)
    written = {}
    for name in dict.fromkeys(asked):
        written[name] = out / FORMATS[name]
        _write(name, model.net, example, written[name])
    return written


def _write(name: str, net: nn.Module, example: torch.Tensor | None, path: Path) -> None:
    """`net` in the format `name` at `path`, written whole or not at all (but ONNX, which its exporter writes)."""
    if name == "state_dict":
        write_atomically(path, lambda file: torch.save(net.state_dict(), file))
    elif name == "torchscript":
        # Into memory first: TorchScript's own file writer aborts the whole process when the disk is full.
        scripted = _torchscript(net, example).save_to_buffer()
        write_atomically(path, lambda file: file.write(scripted))
    else:
        _onnx(net, example, path)


def _torchscript(net: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """`net` traced on `example`, or scripted when it cannot be traced."""
    with warnings.catch_warnings(), torch.no_grad():
        # TorchScript is deprecated in favour of torch.export, but it is still what C++ and mobile runtimes load.
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        try:
            return torch.jit.trace(net, example)
        except RuntimeError:
            return torch.jit.script(net)


def _onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    """`net` in ONNX at `path`, with a dynamic batch axis named `batch` on its input and output. The exporter writes
    the file itself (and its weights beside it when large), so a full disk can leave it cut short; the error says so."""
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'dynamic_axes' is not recommended", category=UserWarning)
        try:
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                external_data=size > ONNX_INLINE_LIMIT,
                verbose=False,
            )
        except (OSError, RuntimeError) as error:
            if (refused := write_error("write", path, error)) is None:
                raise
            raise refused from error


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: export, print each file written; a user error prints one line and returns 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by main.py fit")
    parser.add_argument("--out_dir", required=True, help="directory for the exported files (created)")
    parser.add_argument("--formats", nargs="+", default=DEFAULT_FORMATS, help=f"any of {', '.join(FORMATS)}")
    parser.add_argument("--input_shape", nargs="+", type=int, help="one input's shape, e.g. 1 28 28 for MNIST")
    args = parser.parse_args(argv)
    try:
        written = export(args.ckpt_path, args.out_dir, args.formats, input_shape=args.input_shape)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
