"""The private names of Lightning and jsonargparse that this template uses, in one place, each with its reason. They
may change in any release: tests/test_lightning_internals.py fails with a message naming the one that went away."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


def logger_writes_this_step(trainer: pl.Trainer) -> bool:
    """Whether the logger writes the metrics of the training step now running (after its optimizer step, every
    `log_every_n_steps`). Lightning answers this in private only; its own LearningRateMonitor asks the same way. The
    training loss is logged on those steps alone, because `self.log` costs more than a small model's whole step."""
    return trainer._logger_connector.should_update_logs and not trainer.fit_loop._should_accumulate()


def saved_last_at_this_step(checkpoint: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether `checkpoint` wrote last.ckpt (a file, not a link to another checkpoint) at the step training is at.
    ModelCheckpoint records this in private only. When training fails, it spares writing the same checkpoint
    again: a SIGTERM leaves a job little time."""
    written = checkpoint._last_checkpoint_saved == checkpoint.last_model_path
    return bool(written and checkpoint.last_model_path) and checkpoint._last_global_step_saved == trainer.global_step


def saves_during_epochs(checkpoint: Any) -> tuple[int, Any]:
    """The `every_n_train_steps` (0 for none) and `train_time_interval` (None for none) a ModelCheckpoint was given,
    which it keeps in private only; (0, None) for any other checkpoint callback. With several optimizer steps per
    Lightning step (data.group_batches), its saves between epochs would fall between the steps it counts, so they
    are refused."""
    if not isinstance(checkpoint, ModelCheckpoint):
        return 0, None
    return checkpoint._every_n_train_steps or 0, checkpoint._train_time_interval


def parser_that_failed(error: Exception | None, parser: Any) -> Any:
    """The parser of the subcommand whose options `error` is about, which jsonargparse attaches to the error (in
    private), else `parser`: so that a parse error points to `main.py fit --help`, not `main.py --help`."""
    return getattr(error, "subcommand_parser", None) or parser
