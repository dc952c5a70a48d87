"""Checkpoints that survive crashes: atomic, fsynced writes; a last.ckpt to resume from when training fails; a stop
at the first non-finite loss, before it reaches the weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from fsspec.utils import get_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks._console import print_line
from files import remove_stale_temporaries, write_atomically
from lightning_internals import saved_last_at_this_step
from trust import load_checkpoint
from utils import ConfigError, DataError


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite; raised by FiniteLossGuard on every device at the same step.
    `weights_finite` says whether it was found before the weights took that loss (else no checkpoint is written)."""

    weights_finite: bool = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside the target, fsyncs it and renames it onto the target, so
    that a crash, a Ctrl+C or a full disk mid-write leaves the previous checkpoint intact (a write refused is a
    `files.WriteError` naming the file and the system's reason; the temporary files of processes that died mid-save
    are deleted by this process's first save into their folder); reads every checkpoint that the trainer
    loads (resuming, `ckpt_path` of validate/test/predict, the best one after fit) as `trust.load_checkpoint` does,
    whatever `weights_only` Lightning asks for. Use with `trainer.plugins`; main.py always does.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp dir (so on
    another filesystem the final move is a copy a crash can truncate) and fsyncs nothing.
    Remote paths (s3://...) are saved by Lightning's own method, and not read back.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()  # folders whose stale temporary files this process has deleted

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        path = Path(path)
        if path.parent not in self._swept:  # once per folder: not a listing of the folder at every save
            remove_stale_temporaries(path.parent, "*.ckpt")
            self._swept.add(path.parent)
        # The temporary file is not named *.ckpt, so that nothing takes a half-written file for a checkpoint.
        write_atomically(path, lambda file: torch.save(checkpoint, file))
        return None

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at `path` as `trust.load_checkpoint` reads it: onto the CPU, and weights-only always. Bare
        weights are accepted too: ddp_spawn hands the trained ones back to the main process so."""
        return load_checkpoint(path, option="checkpoint", weights_alone=True)


def with_checked_loading(plugins: Any) -> list[Any]:
    """`trainer.plugins` as a list that holds this template's CheckpointIO, through which the trainer reads every
    checkpoint: added when the plugins given have none; any other CheckpointIO is refused."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    for plugin in plugins:
        if isinstance(plugin, CheckpointIO) and not isinstance(plugin, AtomicCheckpointIO):
            raise ConfigError(
                f"trainer.plugins: {type(plugin).__name__} would read checkpoints without this template's checks "
                "(trust.py); leave it out: callbacks.AtomicCheckpointIO reads and writes them"
            )
    if not any(isinstance(plugin, AtomicCheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def check_checkpoint_reading(strategy: Strategy) -> None:
    """Raise a ConfigError unless `strategy` reads checkpoints through AtomicCheckpointIO. Some (FSDP, DeepSpeed)
    read them their own way, with plain unpickling."""
    if type(strategy).load_checkpoint is not Strategy.load_checkpoint or not isinstance(
        strategy.checkpoint_io, AtomicCheckpointIO
    ):
        raise ConfigError(
            f"trainer.strategy {type(strategy).__name__} reads checkpoints its own way, without this template's "
            "checks (trust.py): use a single device, ddp or ddp_spawn"
        )


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes `last.ckpt` when fitting fails (an exception, Ctrl+C, a diverged loss), so
    that `--ckpt_path last` resumes from where training stopped, and says so in one line. A SIGTERM (what
    schedulers send before they kill a job) stops training at the next step and is such a failure.

    Only `last.ckpt` is written then, whatever `save_last` says (a real file even with `save_last: link`): the
    state at the failure is no best checkpoint. Nothing is written when no training step was taken, under
    fast_dev_run, or during the sanity check. On several devices it writes only for failures that every device
    raises together (Ctrl+C, TrainingDiverged): saving needs all of them. When that save fails too (a full disk), it
    says so, and the error that stopped training is the one raised. Its arguments are ModelCheckpoint's.

    Args:
        dirpath: Directory of the checkpoints; by default `<run directory>/checkpoints`.
        filename: Name of the best checkpoints, e.g. "best-{epoch}"; by default "{epoch}-{step}".
        monitor: Metric that ranks the checkpoints, e.g. val/loss; null keeps the latest.
        verbose: Say when a checkpoint is written.
        save_last: Also keep `last.ckpt` with the latest state; "link" makes it a link to the latest checkpoint.
        save_top_k: How many best checkpoints to keep; -1 keeps all, 0 none.
        save_on_exception: ModelCheckpoint's own save on an exception, under `filename` (not needed here).
        save_weights_only: Save the weights alone, without optimizer and loop states (such cannot resume).
        mode: Whether the best `monitor` is the min or the max.
        auto_insert_metric_name: Put the metric names into `filename`'s fields ("epoch=3" rather than "3").
        every_n_train_steps: Save every n optimizer steps; 0 or null for none.
        train_time_interval: Save at this interval of training time.
        every_n_epochs: Save every n epochs.
        save_on_train_epoch_end: Save at the end of the training epoch rather than after validation.
        enable_version_counter: Add -v1, -v2... rather than overwrite a file of the same name.
    """

    _state_key: str | None = None  # ModelCheckpoint's, kept while set up: Lightning asks for it at every hook

    @property
    def state_key(self) -> str:
        return self._state_key if self._state_key is not None else super().state_key

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._state_key = None
        self._state_key = self.state_key

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._state_key = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if not self._should_save_for_resuming(trainer, exception):
            return
        if isinstance(exception, TrainingDiverged) and not exception.weights_finite:
            print_line(
                trainer,
                f"Training stopped by TrainingDiverged at step {trainer.global_step}; the weights took the "
                "non-finite loss, so no last.ckpt was written: the last finite weights are in "
                f"{self.last_model_path or 'no checkpoint'}",
            )
            return
        cause = "SIGTERM" if isinstance(exception, SIGTERMException) else type(exception).__name__
        stopped = f"Training stopped by {cause} at step {trainer.global_step}"
        if not saved_last_at_this_step(self, trainer):
            path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            try:
                trainer.save_checkpoint(path)
            except Exception as error:  # a full disk fails this save too: the error that stopped training must surface
                print_line(
                    trainer,
                    f"{stopped}; saving last.ckpt failed as well ({_described(error)}); --ckpt_path last resumes "
                    "from the newest checkpoint saved before",
                )
                return
            self.last_model_path = path
        if isinstance(exception, TrainingDiverged):
            # Resuming would bring back the checkpoint's hyperparameters, and with them the divergence.
            print_line(trainer, f"{stopped}; the last finite weights are in {self.last_model_path}")
        elif isinstance(exception, DataError):
            print_line(trainer, f"{stopped}; fix the data, then resume with --ckpt_path last ({self.last_model_path})")
        else:
            print_line(trainer, f"{stopped}; resume with --ckpt_path last ({self.last_model_path})")

    def _should_save_for_resuming(self, trainer: pl.Trainer, exception: BaseException) -> bool:
        # Lightning stops every device at the same step on a SIGTERM, as on Ctrl+C.
        together = isinstance(exception, (KeyboardInterrupt, SIGTERMException, TrainingDiverged))
        together = together or trainer.world_size == 1
        return (
            together
            and trainer.state.fn == TrainerFn.FITTING
            and self.dirpath is not None
            and trainer.model is not None
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and trainer.global_step > 0  # nothing to resume
        )


def _described(error: Exception) -> str:
    """`error` in a few words: a user's error (a full disk...) by its message, anything else with its type too."""
    return str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"


class FiniteLossGuard(Callback):
    """Stops training with TrainingDiverged when the training loss becomes NaN or infinite, naming the step, epoch
    and batch where it first did. On several devices, all stop at the same step when any one's loss is not finite.

    Checked at every step (the default on the CPU, where reading a loss costs nothing), it stops before the
    optimizer applies that loss: the weights, and the `last.ckpt` that ResumableCheckpoint writes then, stay finite.
    Reading a loss on a GPU waits for the device, so there each step's loss is recorded on the device alone, and
    read every `check_every_n_steps` training batches, at the end of each epoch, before validation and before any
    checkpoint is written; a non-finite loss found then stops training with no checkpoint of the weights it reached
    (the last one written holds finite weights). Weights-only checkpoints are written without the callbacks' hooks,
    so with a `save_weights_only` checkpoint callback the loss is checked at every step.

    Args:
        check_every_n_steps: Read the losses every n training batches; null: every step on the CPU, else every
            `trainer.log_every_n_steps` (when the logger reads the loss anyway).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ConfigError(f"finite_loss.check_every_n_steps {check_every_n_steps}: give 1 or more, or null")
        self.check_every_n_steps = check_every_n_steps
        self._every = 1
        self._losses: torch.Tensor | None = None  # on the device: each unread batch's loss, its non-finite part
        self._unread: list[tuple[int, int, int]] = []  # the step, epoch and batch of each loss recorded and not read
        self._reached: TrainingDiverged | None = None  # a divergence found after the weights took it

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        every = self.check_every_n_steps
        if every is None:
            every = 1 if trainer.strategy.root_device.type == "cpu" else max(1, trainer.log_every_n_steps)
        if any(getattr(c, "save_weights_only", False) for c in trainer.checkpoint_callbacks):
            every = 1
        self._every, self._losses, self._unread, self._reached = every, None, [], None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        local = loss.detach()
        step = (trainer.global_step, trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx)
        if self._every == 1:
            self._check_now(trainer, local, step)
            return
        if self._losses is None:
            self._losses = torch.zeros(self._every, dtype=torch.float32, device=local.device)
        # No read: one copy into the record (a reduction first when the loss is not one number).
        if local.numel() != 1:
            local = torch.where(torch.isfinite(local), 0.0, local).sum()
        self._losses[len(self._unread)].copy_(local.reshape(()))
        self._unread.append(step)
        if len(self._unread) == self._every:
            # Read with this batch's loss in: when it is the first non-finite one, no weights took it yet.
            self._read(trainer, applied=len(self._unread) - 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Raised before the checkpoint is written: none holds weights that a non-finite loss reached."""
        if self._reached is not None:
            raise self._reached
        self._read(trainer)

    def _check_now(self, trainer: pl.Trainer, local: torch.Tensor, step: tuple[int, int, int]) -> None:
        """Read this batch's loss, before the optimizer applies it."""
        finite = bool(torch.isfinite(local).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        if finite:
            what = "nan or inf on another device"
        elif bool(torch.isnan(local).any()):
            what = "nan"
        else:
            what = "-inf" if bool((local == -math.inf).any()) else "inf"
        raise _diverged(trainer, what, step, weights_finite=True)

    def _read(self, trainer: pl.Trainer, applied: int | None = None) -> None:
        """Read the losses recorded since the last read (the first `applied` of them already in the weights, all
        when None), on every device together, and raise TrainingDiverged at the first non-finite one."""
        count = len(self._unread)
        if count == 0 or self._losses is None:
            return
        losses = self._losses[:count]
        places = torch.arange(count, device=losses.device)
        first = torch.where(torch.isfinite(losses), count, places).min()  # `count` when all are finite
        value = losses[first.clamp(max=count - 1)]
        kind = torch.where(torch.isnan(value), 1, torch.where(value > 0, 2, 3))
        # The first step on any device, and what its loss was there: all devices hold the same steps.
        key = int(trainer.strategy.reduce(first * 4 + kind, reduce_op="min"))
        unread, self._unread = self._unread, []
        if key >= 4 * count:
            return
        place, what = divmod(key, 4)
        applied = count if applied is None else applied
        error = _diverged(trainer, ("nan", "inf", "-inf")[what - 1], unread[place], weights_finite=place >= applied)
        if not error.weights_finite:
            self._reached = error
        raise error


def _diverged(trainer: pl.Trainer, what: str, step: tuple[int, int, int], weights_finite: bool) -> TrainingDiverged:
    """The error for a loss that became `what` at `step` (the global step, epoch and batch)."""
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
    error = TrainingDiverged(
        f"the training loss became {what} at step {step[0]} (epoch {step[1]}, batch {step[2]}): lower the learning "
        f"rate (now model.lr={lr:g}), clip gradients (--trainer.gradient_clip_val 1.0) or check the data for nan/inf "
        "values"
    )
    error.weights_finite = weights_finite
    return error
