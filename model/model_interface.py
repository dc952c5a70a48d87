"""The LightningModule: builds the network named by `net` from `model/<net>.py` and owns the training logic."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from utils import ConfigError, find_class


def _torch_attr(namespace: Any, kind: str, name: str, examples: str) -> Any:
    """`namespace.name` (a loss, optimizer or scheduler class), or a ConfigError that says where to look."""
    cls = getattr(namespace, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"unknown {kind} {name!r}: use a class name from {namespace.__name__}, e.g. {examples}")
    return cls


class MInterface(pl.LightningModule):
    """Trains the `nn.Module` defined in `model/<net>.py`; that file stays plain PyTorch.

    Every argument is a plain value, so checkpoints load with weights-only unpickling and
    `MInterface.load_from_checkpoint(path)` needs nothing else.

    Args:
        net: Model file in `model/`, without `.py`.
        net_args: Constructor arguments of that model (on the command line: `--model.net_args.NAME VALUE`).
        loss: Loss class in `torch.nn`, e.g. L1Loss, MSELoss, HuberLoss.
        optimizer: Optimizer class in `torch.optim`, e.g. SGD, Adam, AdamW.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        lr_scheduler: Scheduler class in `torch.optim.lr_scheduler` stepped once per epoch, or null for none.
        lr_scheduler_args: Its arguments, e.g. {step_size: 100, gamma: 0.5} for StepLR.
    """

    def __init__(
        self,
        net: str = "linear",
        net_args: dict[str, Any] | None = None,
        loss: str = "L1Loss",
        optimizer: str = "SGD",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        lr_scheduler: str | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        self.save_hyperparameters()
        self.net = find_class("model", net, nn.Module)(**(net_args or {}))
        self.loss_fn = _torch_attr(nn, "loss", loss, "L1Loss, MSELoss, HuberLoss")()
        self.lr = lr  # an attribute, so that Lightning's learning-rate finder can set it
        self.optimizer_class = _torch_attr(torch.optim, "optimizer", optimizer, "SGD, Adam, AdamW")
        self.scheduler_class = (
            None
            if lr_scheduler is None
            else _torch_attr(torch.optim.lr_scheduler, "lr_scheduler", lr_scheduler, "StepLR, CosineAnnealingLR")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        self.log(f"{stage}/loss", self.loss_fn(self(x), y), prog_bar=True, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_class(self.parameters(), lr=self.lr, weight_decay=self.hparams.weight_decay)
        if self.scheduler_class is None:
            return optimizer
        scheduler = self.scheduler_class(optimizer, **(self.hparams.lr_scheduler_args or {}))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
