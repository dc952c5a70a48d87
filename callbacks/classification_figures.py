"""The confusion matrix and a grid of labelled test images, drawn after each test of a classifier."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from files import run_dir


class ClassificationFigures(Callback):
    """Saves `confusion_matrix.png` and `test_images.png` into the run directory and logs both to TensorBoard.

    The confusion matrix counts the whole test set over all devices; the grid shows the first test images
    with predicted and true class, wrong ones in red. Does nothing for regression models.

    Args:
        max_images: Number of test images in the grid.
    """

    def __init__(self, max_images: int = 32) -> None:
        self.max_images = max_images
        self.confusion: Any = None  # a torchmetrics confusion matrix while a classifier is tested

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = None
        if getattr(pl_module, "classification", False) and trainer.datamodule.classes:
            from torchmetrics.classification import MulticlassConfusionMatrix

            self.confusion = MulticlassConfusionMatrix(len(trainer.datamodule.classes)).to(pl_module.device)
            self.images: list[torch.Tensor] = []
            self.labels: list[torch.Tensor] = []
            self.predictions: list[torch.Tensor] = []

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if self.confusion is None:
            return
        x, y = batch
        predicted = outputs.argmax(dim=1)
        self.confusion.update(predicted, y)
        room = self.max_images - sum(len(i) for i in self.images)
        if room > 0 and x.dim() == 4:
            self.images.append(x[:room].cpu())
            self.labels.append(y[:room].cpu())
            self.predictions.append(predicted[:room].cpu())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.confusion is None:
            return
        matrix = self.confusion.compute().cpu()  # every rank takes part in the sync
        if (run := run_dir(trainer)) is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        classes = trainer.datamodule.classes
        figures = {"confusion_matrix": _confusion_figure(plt, matrix, classes)}
        if self.images:
            figures["test_images"] = _grid_figure(
                plt, torch.cat(self.images), torch.cat(self.labels), torch.cat(self.predictions), classes
            )
        for name, fig in figures.items():
            fig.savefig(run / f"{name}.png", dpi=100, bbox_inches="tight")
            if isinstance(trainer.logger, TensorBoardLogger):
                trainer.logger.experiment.add_figure(name, fig, global_step=trainer.global_step)
            plt.close(fig)


def _confusion_figure(plt: Any, matrix: torch.Tensor, classes: list[str]) -> Any:
    n = len(classes)
    size = min(4 + 0.5 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title=f"Test accuracy {matrix.diag().sum() / matrix.sum():.2%}")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    return fig


def _grid_figure(
    plt: Any, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, classes: list[str]
) -> Any:
    columns = 8
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, guess in zip(axes.flat, images, labels, predicted, strict=False):  # rows are filled up
        low, high = image.min(), image.max()
        image = ((image - low) / (high - low + 1e-8)).permute(1, 2, 0).squeeze(-1)  # undo normalisation for display
        ax.imshow(image, cmap="gray" if image.dim() == 2 else None)
        color = "green" if guess == label else "red"
        ax.set_title(f"{classes[guess]}\n(true: {classes[label]})", fontsize=8, color=color)
    return fig
