"""The template's Trainer: Lightning's, with the learning-rate and batch-size finders as methods, so that LightningCLI
runs them as the subcommands `lr_find` and `scale_batch_size` (with the same options as `fit` and those below), and
with each run's own directory as its `log_dir`, whatever the logger. Its evaluation methods say in one line what
they do: LightningCLI lists the first line of each method's docstring in `--help`, which cut Lightning's own
mid-sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.core.datamodule import LightningDataModule
from lightning.pytorch.tuner import Tuner

from callbacks.results import record
from files import run_dir
from utils import ConfigError


class TemplateTrainer(pl.Trainer):
    """Lightning's Trainer, with the Tuner's two finders; `train` fits with what they found."""

    @property
    def log_dir(self) -> str | None:
        """The run directory (`files.run_dir`), where config.yaml and the figures go. Lightning's own gives an MLflow
        or W&B logger's save_dir, which all their runs share. Called on every process, as Lightning's."""
        local = run_dir(self) if self.is_global_zero else None
        found = self.strategy.broadcast(str(local) if local is not None else None)
        return found if found is not None else super().log_dir

    def fit(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any | LightningDataModule | None = None,
        val_dataloaders: Any | None = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train the model on the data, then validate and test its best checkpoint (see --test_after_fit).

        Args:
            model: The model to train.
            train_dataloaders: Its training data, as loaders or a data module.
            val_dataloaders: Its validation data.
            datamodule: Its data.
            ckpt_path: A checkpoint to go on from: a file, or last or best of the latest run under runs/<model>,
                which then goes on in its own run directory (last with no run yet starts one).
            weights_only: Load the checkpoint weights-only (always, in this template).
        """
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def validate(
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any | LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """Evaluate the model on the validation split once; results.json records the metrics and the checkpoint.

        Args:
            model: The model to validate.
            dataloaders: Its validation data, as loaders or a data module.
            ckpt_path: A checkpoint file, or last or best: that of the latest run under runs/<model>, whose data
                module is then rebuilt too (every option given still wins).
            verbose: Print the metrics.
            datamodule: Its data.
            weights_only: Load the checkpoint weights-only (always, in this template).
        """
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any | LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """Evaluate the model on the test split once (never during fit); results.json records the metrics.

        Args:
            model: The model to test.
            dataloaders: Its test data, as loaders or a data module.
            ckpt_path: A checkpoint file, or last or best: that of the latest run under runs/<model>, whose data
                module is then rebuilt too (every option given still wins).
            verbose: Print the metrics.
            datamodule: Its data.
            weights_only: Load the checkpoint weights-only (always, in this template).
        """
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any | LightningDataModule | None = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> list[Any] | None:
        """Predict with the model and write predictions.csv into a run directory of its own.

        Args:
            model: The model to predict with.
            dataloaders: The data to predict on, as loaders or a data module.
            datamodule: Its data.
            return_predictions: Keep the predictions in memory as well (not with processes of their own).
            ckpt_path: A checkpoint file, or last or best: that of the latest run under runs/<model>, whose data
                module is then rebuilt too (every option given still wins).
            weights_only: Load the checkpoint weights-only (always, in this template).
        """
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def lr_find(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        train: bool = False,
    ) -> float | None:
        """Find a learning rate with Lightning's range test, save the loss-versus-lr plot, and set it on the model.

        Args:
            model: The model to tune.
            datamodule: Its data.
            min_lr: The smallest learning rate tried.
            max_lr: The largest learning rate tried.
            num_training: How many learning rates are tried, one training step each.
            mode: How the learning rate grows between steps: exponential or linear.
            early_stop_threshold: Stop once the loss exceeds this many times its lowest value; null never stops.
            train: Then train at the suggested learning rate, as `fit` does.
        """
        _refuse_groups("lr_find", datamodule)
        finder = Tuner(self).lr_find(
            model,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
        )
        suggestion = finder.suggestion() if finder is not None else None
        if suggestion is None and train:
            raise ConfigError(
                "the learning-rate finder has no suggestion (the loss never fell steadily): "
                "widen --min_lr/--max_lr or raise --num_training"
            )
        results: dict[str, Any] = {"suggested_lr": suggestion}
        if (directory := self._tuned_run(model, datamodule)) and finder is not None:
            results["plot"] = str(directory / "lr_find.png")
            finder.plot(suggest=True).savefig(results["plot"])
        said = f"Suggested learning rate: {suggestion:.3g}" if suggestion else "No suggested learning rate"
        self._found(model, datamodule, said, {"lr_find": results}, train)
        return suggestion

    def scale_batch_size(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        margin: float = 0.05,
        max_val: int = 8192,
        train: bool = False,
    ) -> int | None:
        """Find the largest batch size that fits in memory with Lightning's batch-size finder, and set it on the data.

        Args:
            model: The model to tune.
            datamodule: Its data, whose `batch_size` is grown.
            mode: power (double until memory runs out) or binsearch (then search between the last two sizes).
            steps_per_trial: Training steps tried at each batch size.
            init_val: The batch size tried first.
            max_trials: The most batch sizes tried.
            margin: Share of the found batch size given up, for headroom (binsearch only).
            max_val: The largest batch size tried.
            train: Then train with the batch size found, as `fit` does.
        """
        _refuse_groups("scale_batch_size", datamodule)
        size = Tuner(self).scale_batch_size(
            model,
            datamodule=datamodule,
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            margin=margin,
            max_val=max_val,
        )
        self._tuned_run(model, datamodule)
        results = {"scale_batch_size": {"suggested_batch_size": size}}
        self._found(model, datamodule, f"Suggested batch size: {size}", results, train)
        return size

    def _found(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None,
        said: str,
        results: dict[str, Any],
        train: bool,
    ) -> None:
        """What a finder ends with: say what it found, record it in results.json, then fit with it when `train`."""
        print(said)
        record(self, results)
        if train:
            self.fit(model, datamodule=datamodule)

    def _tuned_run(self, model: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> Path | None:
        """Make what the finder set (the learning rate, the batch size) the hyperparameters that the loggers and the
        checkpoints record, and return the run directory, less the empty hparams.yaml that the Tuner's trial runs
        leave (the logger would then never write it again)."""
        for module in (model, datamodule):
            if module is not None:
                module.save_hyperparameters(dict(module.hparams))
        directory = run_dir(self)
        if directory is not None:
            (directory / "hparams.yaml").unlink(missing_ok=True)
        return directory


def _refuse_groups(finder: str, datamodule: pl.LightningDataModule | None) -> None:
    """A ConfigError for a finder on data served in groups of batches (`DInterface.group_batches`): the finders
    take one batch per Lightning step and step per batch, so grouped batches would mismeasure them."""
    group = getattr(datamodule, "group_batches", 1)
    if group > 1:
        raise ConfigError(f"{finder} measures one optimizer step per batch: remove data.group_batches ({group})")
