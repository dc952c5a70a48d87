"""What a run leaves for people and scripts to read: results.json and model.pth in the run directory, and the final
metrics next to the hyperparameters in every logger."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus

from callbacks._console import print_line
from files import run_dir, write_atomically

RESULTS_FILE = "results.json"
WEIGHTS_FILE = "model.pth"
# The parts of results.json whose metrics the loggers get at the end, each as hp/<metric> (hp/test/acc...).
FINAL_PARTS = ("fit", "validation", "test")
EVALUATIONS = {"validate": ("validation", "val/"), "test": ("test", "test/")}


class RunResults(Callback):
    """Keeps results.json in the run directory (`files.run_dir`: none under fast_dev_run), written by global rank 0
    whole or not at all, with nan and inf as strings since JSON has no literal for them:

    - `fit`: the metrics as training ends (train/*, the last validation's val/*, val/acc_best);
    - `best_checkpoint`: the best checkpoint of the first ModelCheckpoint, or null;
    - `validation`, `test`: the metrics of a validate or test run (not of the validations inside fit), and
      `checkpoint`, the checkpoint it evaluated (null: the network as it was), which a predict run records too;
    - `state_dict`: model.pth, the weights of the network evaluated last (`pl_module.net`), which load without
      Lightning: after fit, the CLI evaluates the best checkpoint, so these are the best network's;
    - what other callbacks and the CLI add with `record` (parameters, predictions, lr_find...).

    A fit's results go out with the first write after it (the CLI's validation of the best checkpoint), so that a
    run stopped before then leaves no results.json; under ddp_spawn, whose processes end with the fit, at its end.
    A fit starts the file afresh (a resumed run keeps no stale keys); a validate or test into the directory of an
    earlier run adds to what it holds, as does each process of ddp_spawn, which runs every stage in new processes.
    `report`, at the end of a command, gives the loggers the final metrics and says where the run went.
    """

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self._replaces_file = False  # a fit began in this process: what results.json held before is stale
        self._process = os.getpid()  # ddp_spawn runs copies of this callback in processes that end with each stage

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._replaces_file = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not called for the trial steps of the Tuner's finders, whose fit ends early.
        saving = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        best = (saving[0].best_model_path if saving else "") or None
        self.add(trainer, {"fit": _metrics(trainer, ""), "best_checkpoint": best})

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called once a validate, test or predict run has finished (not when it failed), after its table is printed.
        if stage == "predict":
            self.add(trainer, {"checkpoint": trainer.ckpt_path})
        if stage not in EVALUATIONS:
            return
        part, prefix = EVALUATIONS[stage]
        results: dict[str, Any] = {part: _metrics(trainer, prefix), "checkpoint": trainer.ckpt_path}
        if (directory := output_dir(trainer)) is not None:
            weights = pl_module.net.state_dict()
            results["state_dict"] = str(directory / WEIGHTS_FILE)
            write_atomically(directory / WEIGHTS_FILE, lambda file: torch.save(weights, file))
        self.add(trainer, results)

    def add(self, trainer: pl.Trainer, results: dict[str, Any]) -> None:
        """Merge `results` into the run's results and write them, except during a fit that this process outlives
        (then the next write takes them along)."""
        if not trainer.is_global_zero:
            return
        self.results.update(results)
        fitting = trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.RUNNING
        if not fitting or os.getpid() != self._process:
            self.write(trainer)

    def write(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Write results.json; returns all that it holds, or None when there is none to write (a process other than
        global rank 0, fast_dev_run, a run stopped by SIGTERM)."""
        directory = output_dir(trainer)
        if directory is None:
            return None
        path = directory / RESULTS_FILE
        results = self.results if self._replaces_file else {**_read(path), **self.results}
        text = json.dumps(json_ready(results), indent=2) + "\n"
        write_atomically(path, lambda file: file.write(text.encode()))
        return results

    def report(self, trainer: pl.Trainer) -> None:
        """Write results.json, give every logger the final metrics next to the hyperparameters, and print where
        the run went. Once, at the end of a command: TensorBoard's HPARAMS tab keeps the first metrics it is given."""
        results = self.write(trainer)
        if results is None:
            return
        final = {f"hp/{k}": float(v) for part in FINAL_PARTS for k, v in results.get(part, {}).items()}
        model, data = trainer.lightning_module, trainer.datamodule
        params = {**(data.hparams if data is not None else {}), **model.hparams}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, final or None)  # the HPARAMS tab: both side by side
            else:
                # MLflow refuses a new value for a logged parameter (the lr a finder set): it keeps those that
                # Lightning logged as each run began.
                if not isinstance(logger, MLFlowLogger):
                    logger.log_hyperparams(params)
                if final:
                    logger.log_metrics(final, step=trainer.global_step)
            logger.save()
        print_line(trainer, f"Run written to {run_dir(trainer)}")
        for logger in trainer.loggers:
            print_line(trainer, where_logged(logger))


def output_dir(trainer: pl.Trainer) -> Path | None:
    """The run directory that results are written into (`files.run_dir`), or None. A run that received SIGTERM
    writes none: the CLI stops it and says what was not done."""
    return None if trainer.received_sigterm else run_dir(trainer)


def record(trainer: pl.Trainer, results: dict[str, Any]) -> None:
    """Add `results` (keys of their own, such as {"lr_find": {...}}) to the run's results.json, through the trainer's
    RunResults; nothing without one."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunResults):
            callback.add(trainer, results)


def report(trainer: pl.Trainer) -> None:
    """At the end of a command: write the results, give the loggers the final metrics and say where the run went,
    through the trainer's RunResults (see `RunResults.report`); nothing without one."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunResults):
            callback.report(trainer)


def where_logged(logger: Logger) -> str:
    """One line that says where `logger` keeps the run, and how to look at it."""
    if isinstance(logger, TensorBoardLogger):
        return f"Open TensorBoard with: tensorboard --logdir {logger.root_dir}"
    if isinstance(logger, CSVLogger):
        return f"Metrics written to {logger.experiment.metrics_file_path}"
    if isinstance(logger, MLFlowLogger):
        uri = logger.experiment.tracking_uri
        return f"MLflow run {logger.run_id} in {uri}; browse it with: mlflow ui --backend-store-uri {uri}"
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        if run.offline:
            return f"W&B run kept offline; upload it with: wandb sync {Path(run.dir).parent}"
        return f"W&B run: {run.url}"
    place = getattr(logger, "log_dir", None) or logger.save_dir
    return f"Logged with {type(logger).__name__}" + (f" to {place}" if place else "")


def _metrics(trainer: pl.Trainer, prefix: str) -> dict[str, float]:
    return {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def _read(path: Path) -> dict[str, Any]:
    """What results.json at `path` holds: an earlier process's results of the same run; empty if none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def json_ready(value: Any) -> Any:
    """`value` with nan/inf floats as strings, since JSON has no literal for them."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
