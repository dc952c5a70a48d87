"""Pruning for a sweep's trial: the monitored metric goes to the trial's Optuna study at each validation, and training
stops (as EarlyStopping stops it) when the study's pruner judges the trial hopeless. `python main.py sweep` adds
this callback to each trial it starts; the trial is named by the environment, never by a config."""

from __future__ import annotations

import json
import math
import os

import lightning.pytorch as pl
import optuna
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from callbacks._console import print_line
from sweep_study import PRUNED_AT, TRIAL_VARIABLE, make_pruner, open_storage
from utils import ConfigError


class TrialPruning(Callback):
    """Report `monitor` after each validation (the step is the epoch, which trials of different batch sizes share) and
    stop training when the pruner says so. Training stops at the end of that epoch and the run ends as any other:
    its best checkpoint is validated and tested, and results.json is written, so a pruned trial's run is complete up
    to where it stopped.

    Args:
        monitor: The metric to report, as logged (val/loss, val/acc...).
    """

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.trial is not None:
            return
        given = os.environ.get(TRIAL_VARIABLE)
        if not given:
            raise ConfigError(
                "callbacks.trial_pruning.TrialPruning reports to a trial of a sweep, which `python main.py sweep` "
                "starts; remove it from this run's callbacks"
            )
        where = json.loads(given)
        storage = open_storage(where["storage"])
        study = optuna.load_study(
            study_name=where["study"], storage=storage, pruner=make_pruner(where["pruner"], where["pruner_args"])
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(where["study"]), where["trial"]
        )
        self.trial = optuna.Trial(study, trial_id)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # not the validation after fit
            return
        prune = False
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is not None and value is not None and math.isfinite(float(value)):
            epoch = trainer.current_epoch
            self.trial.report(float(value), epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr(PRUNED_AT, epoch)
                print_line(
                    trainer,
                    f"Pruned at epoch {epoch}: {self.monitor} {float(value):.4g} is worse than the sweep's pruner "
                    "accepts; training stops here",
                )
        if trainer.strategy.broadcast(prune):  # every process stops with rank 0
            trainer.should_stop = True
