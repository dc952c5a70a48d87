"""predictions.csv: what `predict` made of each item, one row per item, in the run directory."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from callbacks.results import output_dir, record
from data.data_interface import item_ids
from files import write_atomically
from outputs_and_items import prediction


def class_probabilities(outputs: Any, loss: nn.Module) -> torch.Tensor:
    """A classifier's outputs as class probabilities: NLLLoss is given log-probabilities, CrossEntropyLoss logits.
    `outputs` may be what the network returns, of any shape that `outputs_and_items.prediction` reads."""
    outputs = prediction(outputs)
    return outputs.exp() if isinstance(loss, nn.NLLLoss) else outputs.softmax(dim=1)


class PredictionsWriter(BasePredictionWriter):
    """Writes `filename` into the run directory when a predict run ends, and records it in results.json
    (`predictions`, and `num_predictions`). One row per item of the data module's `predict_set`, in its order, named
    by the item's id (its file name, or its index in the dataset: `item_ids`): for a classifier, the predicted
    class, its name and its probability; else the predicted values (`prediction`, or `prediction_0`,
    `prediction_1`... for several). On several devices, each predicts a share of the items, which global rank 0
    gathers.

    Args:
        filename: Name of the CSV file written into the run directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # One dataloader: a tensor per batch, and per dataloader the dataset indices of each batch's items.
        shares = [(torch.cat(list(predictions)).float(), [i for batch in batch_indices[0] for i in batch])]
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, shares[0])
            shares = gathered
        if not trainer.is_global_zero:
            return
        indices = [i for _, share in shares for i in share]
        order = sorted(range(len(indices)), key=indices.__getitem__)
        outputs = torch.cat([share for share, _ in shares])[order]
        results: dict[str, Any] = {"num_predictions": len(outputs)}
        if (directory := output_dir(trainer)) is not None:
            ids = item_ids(trainer.datamodule.predict_set)
            text = self._table(trainer, pl_module, outputs, [ids[indices[i]] for i in order])
            results["predictions"] = str(directory / self.filename)
            write_atomically(directory / self.filename, lambda file: file.write(text.encode()))
        record(trainer, results)

    @staticmethod
    def _table(trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: torch.Tensor, ids: list[str]) -> str:
        """The CSV text: a header, then one row per item."""
        rows = io.StringIO()
        writer = csv.writer(rows)
        if pl_module.classification:
            probability, predicted = class_probabilities(outputs, pl_module.loss_fn).max(dim=1)
            classes = trainer.datamodule.classes or [str(i) for i in range(outputs.shape[1])]
            writer.writerow(["id", "prediction", "class", "probability"])
            for item, label, p in zip(ids, predicted.tolist(), probability.tolist(), strict=True):
                writer.writerow([item, label, classes[label], f"{p:.6g}"])
        else:
            values = outputs.flatten(1)
            columns = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
            writer.writerow(["id", *columns])
            for item, row in zip(ids, values.tolist(), strict=True):
                writer.writerow([item, *(f"{v:.6g}" for v in row)])
        return rows.getvalue()
