"""environment.py's report of the software and hardware, and the GPUMemoryFraction callback."""

from __future__ import annotations

import ast
import contextlib
import os
import platform
import warnings
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer

import environment
from callbacks import GPUMemoryFraction
from environment import environment_report
from utils import ConfigError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GIB = 2**30


# --- environment_report -------------------------------------------------------------------------------------------


def test_report_names_versions_and_cpu() -> None:
    report = environment_report()
    assert torch.__version__ in report
    assert metadata.version("lightning") in report
    assert platform.python_version() in report
    assert str(os.cpu_count()) in report
    for package in ("torchvision", "torchmetrics", "jsonargparse"):
        assert f"{package} " in report
    assert all(len(line) > 13 and line[12] == " " and line[13] != " " for line in report.splitlines())  # aligned


def test_report_gives_the_cpu_cores_and_torchs_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counts that no version number in the report holds, so that only the CPU line can show them.
    monkeypatch.setattr(os, "cpu_count", lambda: 37)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 23)
    cpu = [line for line in environment_report().splitlines() if line.startswith("CPU ")]
    assert cpu == ["CPU          37 cores, torch uses 23 threads"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_report_says_cuda_is_not_available() -> None:
    assert "CUDA         not available (runs use the CPU)" in environment_report()


@needs_cuda
def test_report_names_each_real_device() -> None:
    report = environment_report()
    for i in range(torch.cuda.device_count()):
        assert torch.cuda.get_device_name(i) in report


def test_report_describes_each_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch, on any machine, with two fake H100s (the second one without bf16, to tell them apart)."""
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * GIB, major=9, minor=0)
    current = {"device": 0}

    @contextlib.contextmanager
    def device(index: int):  # torch.cuda.device(i), which is_bf16_supported() then asks about
        previous, current["device"] = current["device"], index
        yield
        current["device"] = previous

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: current["device"] == 0)
    report = environment_report()
    assert "available, 2 devices" in report
    assert "  cuda:0     NVIDIA H100 80GB HBM3, 80.0 GiB, compute capability 9.0, bf16 supported" in report
    assert "  cuda:1     NVIDIA H100 80GB HBM3, 80.0 GiB, compute capability 9.0, no bf16" in report
    assert "not available (runs use the CPU)" not in report


def test_report_marks_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version

    def version(package: str) -> str:
        if package == "torchmetrics":
            raise metadata.PackageNotFoundError(package)
        return real(package)

    monkeypatch.setattr(environment.metadata, "version", version)
    assert "torchmetrics not installed" in environment_report()


def test_environment_module_does_not_import_lightning() -> None:
    tree = ast.parse(Path(environment.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.split(".")[0] in ("lightning", "pytorch_lightning")]


# --- GPUMemoryFraction --------------------------------------------------------------------------------------------


def _trainer(device: torch.device) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=device))


@pytest.mark.parametrize("fraction", [1.5, 0, -0.1, float("nan")])
def test_fraction_out_of_range_is_a_config_error(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"gpu_memory_fraction must be in \(0, 1\], got"):
        GPUMemoryFraction(fraction)


def test_fraction_of_one_is_allowed() -> None:
    assert GPUMemoryFraction(1).fraction == 1


def test_setup_sets_the_fraction_on_the_process_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *args: calls.append(args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GPUMemoryFraction(0.5).setup(_trainer(torch.device("cuda", 1)), None, "fit")
    assert calls == [(0.5, torch.device("cuda", 1))]


def test_setup_on_cpu_warns_and_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *args: calls.append(args))
    with pytest.warns(UserWarning, match="applies to CUDA GPUs only, and this run uses cpu") as record:
        GPUMemoryFraction(0.5).setup(_trainer(torch.device("cpu")), None, "fit")
    assert len(record) == 1
    assert calls == []


def test_setup_with_a_real_cpu_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *args: calls.append(args))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="this run uses cpu"):
        GPUMemoryFraction(0.25).setup(trainer, None, "fit")
    assert calls == []


@needs_cuda
def test_fraction_limits_real_allocations() -> None:
    device = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        GPUMemoryFraction(0.5).setup(_trainer(device), None, "fit")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device=device)
        small = torch.empty(int(0.1 * total), dtype=torch.uint8, device=device)  # within the limit
        del small
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
