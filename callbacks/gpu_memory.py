"""A cap on the share of each GPU's memory that a run's processes may allocate."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from utils import ConfigError


class GPUMemoryFraction(Callback):
    """Limits the memory PyTorch's caching allocator may take on each process's GPU.

    Applied in `setup`, in every process (also under ddp and ddp_spawn), to the process's own device with
    `torch.cuda.set_per_process_memory_fraction`; an allocation beyond the limit raises
    `torch.cuda.OutOfMemoryError`. Useful when several runs share one GPU. On a CPU, MPS or other device it
    warns and does nothing.

    Args:
        fraction: Share of each GPU's total memory this process may allocate, in (0, 1].
    """

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:  # also rejects NaN
            raise ConfigError(f"gpu_memory_fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(self.fraction, device)
        else:
            rank_zero_warn(
                f"GPUMemoryFraction({self.fraction}): the memory limit applies to CUDA GPUs only, and this run uses "
                f"{device.type}; it is ignored"
            )
