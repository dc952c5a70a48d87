"""The callback the benchmark adds to the template's run, to measure what the raw loops measure by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class BenchTiming(Callback):
    """Records the wall-clock time of the first training step and each training epoch's time (its batches, not
    its validation), and writes them with the GPU's peak memory to `report` when the process ends its run.

    Args:
        report: JSON file to write.
    """

    def __init__(self, report: str) -> None:
        self.report = report
        self.data: dict[str, Any] = {"epoch_times": []}
        self._start: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.data.setdefault("first_step", time.time())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _synchronize(pl_module)
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_epoch(pl_module)  # validation runs inside the training epoch, after its batches

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_epoch(pl_module)

    def _end_epoch(self, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            _synchronize(pl_module)
            self.data["epoch_times"].append(time.perf_counter() - self._start)
            self._start = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.cuda.is_available():
            self.data["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        Path(self.report).write_text(json.dumps(self.data))


def _synchronize(pl_module: pl.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize()
