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
from utils import ConfigError


def class_probabilities(outputs: Any, loss: nn.Module) -> torch.Tensor:
    """A classifier's outputs as class probabilities: NLLLoss is given log-probabilities, CrossEntropyLoss logits.
    `outputs` may be what the network returns, of any shape that `outputs_and_items.prediction` reads."""
    outputs = prediction(outputs)
    return outputs.exp() if isinstance(loss, nn.NLLLoss) else outputs.softmax(dim=1)


COLUMNS = ("prediction", "class", "probability")  # a classifier's, per class listed


def _top_k(trainer: pl.Trainer) -> int:
    """How many classes per item predictions.csv lists: the data module's `top_k`, 1 without one."""
    return int(_data_options(trainer).get("top_k", 1))


def _data_options(trainer: pl.Trainer) -> Any:
    """The data module's hyperparameters, empty without a data module."""
    return getattr(trainer.datamodule, "hparams", None) or {}


class PredictionsWriter(BasePredictionWriter):
    """Writes `filename` into the run directory when a predict run ends, and records it in results.json
    (`predictions`, `num_predictions`, and the data module's `predict_path` when it predicted new data).

    One row per item of the data module's `predict_set`, in its order, named by the item's id (its file name, or its
    index in the dataset: `item_ids`): for a classifier, the predicted class, its name and its probability
    (`prediction`, `class`, `probability`), and with the data module's `top_k` K above 1 the next most probable
    classes as `prediction_2`, `class_2`, `probability_2` ... up to K; else the predicted values (`prediction`, or
    `prediction_0`, `prediction_1`... for several). On several devices, each predicts a share of the items, which
    global rank 0 gathers.

    Args:
        filename: Name of the CSV file written into the run directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check `top_k` before predicting: it is for classifiers, and at most their number of classes."""
        top_k = _top_k(trainer)
        if top_k == 1:
            return
        if not pl_module.classification:
            raise ConfigError(f"data.top_k {top_k} is for classifiers; this model predicts values: remove it")
        classes = getattr(trainer.datamodule, "classes", None)
        if classes and top_k > len(classes):
            raise ConfigError(f"data.top_k {top_k} is more than the {len(classes)} classes: use {len(classes)} or less")

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
        hparams = _data_options(trainer)
        if hparams.get("predict_path") is not None:  # what was predicted on: new data, not the test split
            results["predict_path"] = str(hparams["predict_path"])
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
            top_k = min(_top_k(trainer), outputs.shape[1])
            probability, predicted = class_probabilities(outputs, pl_module.loss_fn).topk(top_k, dim=1)
            classes = trainer.datamodule.classes or [str(i) for i in range(outputs.shape[1])]
            ranks = ["", *(f"_{rank}" for rank in range(2, top_k + 1))]
            writer.writerow(["id", *(f"{column}{rank}" for rank in ranks for column in COLUMNS)])
            for item, labels, ps in zip(ids, predicted.tolist(), probability.tolist(), strict=True):
                ranked = zip(labels, ps, strict=True)
                writer.writerow([item, *(cell for label, p in ranked for cell in (label, classes[label], f"{p:.6g}"))])
        else:
            values = outputs.flatten(1)
            columns = ["prediction"] if values.shape[1] == 1 else [f"prediction_{i}" for i in range(values.shape[1])]
            writer.writerow(["id", *columns])
            for item, row in zip(ids, values.tolist(), strict=True):
                writer.writerow([item, *(f"{v:.6g}" for v in row)])
        return rows.getvalue()
