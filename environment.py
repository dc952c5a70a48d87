"""A report of the software and hardware a run would use: versions, CPU threads, CUDA devices, MPS."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "jsonargparse")
KEY_WIDTH = 13


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _torch_build() -> str:
    """How the installed torch was built: "CUDA build 12.8, cuDNN 91002", "ROCm build 6.2" or "CPU build, no CUDA"."""
    if torch.version.cuda:
        try:
            cudnn = torch.backends.cudnn.version()
        except Exception:  # a broken cuDNN install must not stop the report
            cudnn = None
        return f"CUDA build {torch.version.cuda}, " + (f"cuDNN {cudnn}" if cudnn else "cuDNN not available")
    if getattr(torch.version, "hip", None):
        return f"ROCm build {torch.version.hip}"
    return "CPU build, no CUDA"


def _cuda_device(index: int) -> str:
    """CUDA device `index` as "NVIDIA H100 80GB HBM3, 79.2 GiB, compute capability 9.0, bf16 supported"."""
    props = torch.cuda.get_device_properties(index)
    with torch.cuda.device(index):  # is_bf16_supported() asks about the current device
        bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}, {bf16}"


def environment_report() -> str:
    """The Python, package versions, CPU, CUDA devices and MPS a run in this process would use, one per line."""
    lines = [("python", f"{platform.python_version()} ({platform.platform()})")]
    for package in PACKAGES:
        if package == "torch":  # torch's own version names the build too (2.8.0+cu128), the package's does not
            lines.append((package, f"{torch.__version__} ({_torch_build()})"))
        else:
            lines.append((package, _version(package)))
    lines.append(("CPU", f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"))
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        lines.append(("CUDA", f"available, {count} device{'s' if count != 1 else ''}"))
        lines.extend((f"  cuda:{i}", _cuda_device(i)) for i in range(count))
    else:
        lines.append(("CUDA", "not available (runs use the CPU)"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # an empty or wrong value is a common reason for seeing no GPU
        lines.append(("", f"CUDA_VISIBLE_DEVICES={visible!r}"))
    mps = getattr(torch.backends, "mps", None)
    lines.append(("MPS", "available" if mps is not None and mps.is_available() else "not available"))
    return "\n".join(f"{key:<{KEY_WIDTH}}{value}".rstrip() for key, value in lines)
