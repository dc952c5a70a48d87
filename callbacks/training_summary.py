"""Prints a line when training starts, one per epoch with its metrics, and a final report, as a plain loop would."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.parameter import is_lazy

from callbacks._console import print_line
from utils import ConfigError


class TrainingSummary(Callback):
    """Prints what is trained on what, the metrics of every `every_n_epochs`-th epoch and a final report.

    The start line names the model, its parameter count, the data and its split sizes, the epochs, devices
    and precision. An epoch's line holds its `train/*` and `val/*` metrics, the learning rate it used and its
    wall time; the last epoch's line always comes. The final line gives the epochs, steps and time, the best
    checkpoint and whether early stopping ended the run. Only global rank zero prints, through the progress
    bar when there is one, so that the bar stays intact.

    Args:
        every_n_epochs: Print the metrics of every n-th epoch (and of the last); 0 prints no epoch lines.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self._train_start = self._epoch_start = 0.0
        self._lr: float | None = None
        # The epoch number, learning rate and seconds of the last finished epoch, until its line is printed.
        self._pending: tuple[int, float | None, float] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = self._epoch_start = time.perf_counter()
        self._pending = self._lr = None
        parameters = [p for p in pl_module.parameters() if not is_lazy(p)]
        total = sum(p.numel() for p in parameters)
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        model = _hparam(pl_module, "net") or type(pl_module).__name__
        device = f"{trainer.strategy.root_device.type} x{trainer.num_devices}"
        if trainer.num_nodes > 1:
            device += f" on {trainer.num_nodes} nodes"
        print_line(
            trainer,
            f"Training {model} ({total:,} parameters, {trainable:,} trainable) on {_describe_data(trainer)}, "
            f"{_describe_length(trainer)}, {device}, precision {trainer.precision}",
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The previous epoch is printed only now: the LightningModule's own `on_train_epoch_end` (which logs the
        # epoch's training metrics, such as train/acc) runs after that hook of the callbacks.
        if self._pending is not None and self._pending[0] % self.every_n_epochs == 0:
            self._print_epoch(trainer)
        self._pending = None
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Read before the step: by the epoch's end, a scheduler stepped per epoch already holds the next rate.
        if trainer.optimizers:
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs > 0:
            self._pending = (trainer.current_epoch + 1, self._lr, time.perf_counter() - self._epoch_start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            self._print_epoch(trainer)
            self._pending = None
        epochs = trainer.current_epoch
        line = (
            f"Trained {epochs} epoch{'' if epochs == 1 else 's'} ({trainer.global_step:,} steps) "
            f"in {time.perf_counter() - self._train_start:.1f} s"
        )
        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        path = getattr(checkpoint, "best_model_path", None)
        if score is not None:
            line += f"; best {checkpoint.monitor} {float(score):.4g} at checkpoint {path}"
        elif path:
            line += f"; checkpoint {path}"
        for early_stopping in trainer.early_stopping_callbacks:
            if early_stopping.stopped_epoch > 0 or getattr(early_stopping, "stopping_reason_message", None):
                line += f"; stopped early by EarlyStopping on {early_stopping.monitor}"
                break
        print_line(trainer, line)

    def _print_epoch(self, trainer: pl.Trainer) -> None:
        epoch, lr, seconds = self._pending
        max_epochs = trainer.max_epochs
        parts = [f"epoch {epoch}/{max_epochs}" if max_epochs not in (None, -1) else f"epoch {epoch}"]
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.startswith(("train/", "val/")) and (not isinstance(value, torch.Tensor) or value.numel() == 1):
                parts.append(f"{name} {float(value):.4g}")
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        parts.append(f"{seconds:.1f} s")
        print_line(trainer, "  ".join(parts))


def _hparam(obj: Any, name: str) -> Any:
    hparams = getattr(obj, "hparams", None)
    return hparams.get(name) if isinstance(hparams, dict) else None


def _describe_data(trainer: pl.Trainer) -> str:
    """`synthetic: 3,600 train / 400 val items`: the dataset's name and the sizes of the splits that have one."""
    datamodule = trainer.datamodule
    if datamodule is not None:
        name = _hparam(datamodule, "dataset") or type(datamodule).__name__
        splits = {"train": getattr(datamodule, "train_set", None), "val": getattr(datamodule, "val_set", None)}
    else:
        splits = {
            "train": getattr(trainer.train_dataloader, "dataset", None),
            "val": getattr(trainer.val_dataloaders, "dataset", None),
        }
        name = type(splits["train"]).__name__ if splits["train"] is not None else "dataloaders"
    sizes = []
    for split, dataset in splits.items():
        try:
            sizes.append(f"{len(dataset):,} {split}")
        except TypeError:  # no such split, or a dataset without a length
            pass
    return f"{name}: {' / '.join(sizes)} items" if sizes else name


def _describe_length(trainer: pl.Trainer) -> str:
    if trainer.max_epochs not in (None, -1):
        return f"{trainer.max_epochs} epoch{'' if trainer.max_epochs == 1 else 's'}"
    if trainer.max_steps not in (None, -1):
        return f"max {trainer.max_steps:,} steps"
    return "no epoch limit"
