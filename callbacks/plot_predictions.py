"""The picture of a one-feature regression: the data points with the predictions, drawn after each test."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import Dataset

from files import run_dir


def _stack(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs).flatten(), torch.stack(ys).flatten()


class PlotPredictions(Callback):
    """Plots training, validation and test points with the model's test predictions.

    Saves `<run dir>/<filename>` and logs the figure to TensorBoard. Meant for small datasets of scalar
    (x, y) pairs, such as `data/line.py`.

    Args:
        filename: Name of the PNG written into the run directory.
    """

    def __init__(self, filename: str = "predictions.png") -> None:
        self.filename = filename

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (run := run_dir(trainer)) is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        datamodule = trainer.datamodule
        test_x, test_y = _stack(datamodule.test_set)
        with torch.inference_mode():
            predictions = pl_module(test_x.unsqueeze(1).to(pl_module.device)).flatten().cpu()
        fig, ax = plt.subplots(figsize=(8, 5))
        for split, color, label in (
            (datamodule.train_set, "b", "Training data"),
            (datamodule.val_set, "orange", "Validation data"),
        ):
            ax.scatter(*_stack(split), c=color, s=4, label=label)
        ax.scatter(test_x, test_y, c="g", s=4, label="Testing data")
        ax.scatter(test_x, predictions, c="r", s=4, label="Predictions")
        ax.legend(prop={"size": 12})
        fig.savefig(run / self.filename, dpi=100)
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.experiment.add_figure("predictions", fig, global_step=trainer.global_step)
        plt.close(fig)
