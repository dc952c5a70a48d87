"""The LightningModule: builds the network named by `net` from `model/<net>.py` and owns the training logic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from data_contract import (
    INPUT_SHAPE_KEY,
    check_fits,
    check_task,
    input_shape,
    log_probabilities,
    loss_for,
    record_input_shape,
    sized_net_args,
    unset_sizes,
)
from lightning_internals import logger_writes_this_step, saves_during_epochs
from model._lr_schedule import LinearWarmup, lr_lambda
from outputs_and_items import prediction
from trust import check_plain, checked_load_arguments
from utils import ConfigError, DataError, construct, find_class

# A network argument naming pretrained weights to start from; checkpoints drop it, as they hold the trained weights.
PRETRAINED_ARG = "weights_path"
CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
EVAL_STAGES = ("val", "test")


def _torch_attr(namespace: Any, kind: str, name: str, examples: str) -> Any:
    """`namespace.name` (a loss, optimizer or scheduler class), or a ConfigError that says where to look."""
    cls = getattr(namespace, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"unknown {kind} {name!r}: use a class name from {namespace.__name__}, e.g. {examples}")
    return cls


def _build_loss(name: str, args: dict[str, Any]) -> nn.Module:
    """The loss `nn.<name>(**args)`, tried once on a made-up batch: an argument that torch checks only when the loss
    runs (reduction, label_smoothing, delta...) is an error now, naming it, not a traceback at the first batch."""
    loss_class = _torch_attr(nn, "loss", name, "L1Loss, MSELoss, HuberLoss, CrossEntropyLoss")
    called = f"{name}({', '.join(f'{key}={value!r}' for key, value in args.items())})"
    fix = "fix model.loss_args" if args else "this template calls the loss with a batch's outputs and targets"
    try:
        loss_fn = loss_class(**args)
        if isinstance(loss_fn, CLASSIFICATION_LOSSES):
            value = loss_fn(torch.zeros(3, 3), torch.arange(3))
        else:
            value = loss_fn(torch.full((3, 1), 0.5), torch.full((3, 1), 0.5))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"loss {called} fails: {' '.join(str(error).split())}; {fix}") from error
    if value.numel() != 1:
        raise ConfigError(f"loss {called} gives a loss per item, not one per batch: use reduction mean or sum")
    return loss_fn


class _TrainTotals:
    """The training loss summed over the items since it was last logged, and the epoch's correct predictions: tensors
    on the training device, added to in place at each step. A plain object, not a module: setting a module's
    attribute at every step costs more than the sums."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.items = 0
        self.correct: torch.Tensor | None = None
        self.seen = 0

    def add_loss(self, loss: torch.Tensor, items: int) -> None:
        if self.loss is None:
            self.loss = torch.zeros((), dtype=torch.promote_types(loss.dtype, torch.float32), device=loss.device)
        self.loss.add_(loss, alpha=items)
        self.items += items

    def take_loss(self) -> torch.Tensor:
        """The mean loss since the last call; starts the next window."""
        mean = self.loss / self.items
        self.loss.zero_()
        self.items = 0
        return mean

    def add_predictions(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Count the items whose class of highest score (`out`'s dimension 1) is the target class `y`."""
        correct = (out.argmax(1) == y).sum()
        if self.correct is None:
            self.correct = torch.zeros((), dtype=correct.dtype, device=correct.device)
        self.correct.add_(correct)
        self.seen += y.numel()


def _nonfinite(value: Any, device: torch.device) -> torch.Tensor:
    """Whether `value` is a tensor holding nan or inf values, as a boolean on `device`."""
    if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
        return ~value.isfinite().all().to(device)
    return torch.tensor(False, device=device)


class MInterface(pl.LightningModule):
    """Trains the `nn.Module` defined in `model/<net>.py`; that file stays plain PyTorch.

    The network's size parameters (num_classes, in_channels, input_size...) come from the data when left unset;
    a value set by hand must agree with the data (see `data_contract`). The network's forward may return a tensor,
    a tuple, a dict or a dataclass-like object: the prediction is picked from it by the rule of `outputs_and_items`.
    A classification loss (CrossEntropyLoss, NLLLoss) makes this a classifier: accuracy is logged per split, over all
    devices (validation and test with torchmetrics, and top-5 accuracy above 5 classes; training with counts kept
    on the device, cheaper per step), and the best validation accuracy so far. Left unset, the loss follows the data
    (`data_contract.loss_for`) and the checkpoint records the one chosen.

    Every argument is a plain value, so checkpoints load with weights-only unpickling and
    `MInterface.load_from_checkpoint(path)` needs nothing else.

    Args:
        net: Model file in `model/`, without `.py`.
        net_args: Constructor arguments of that model (on the command line: `--model.net_args.NAME VALUE`).
        loss: Loss class in `torch.nn`: L1Loss, MSELoss, HuberLoss for regression; CrossEntropyLoss to classify
            (NLLLoss for a network that ends with log_softmax); null follows the data: CrossEntropyLoss (or NLLLoss)
            for data with classes, L1Loss for data without.
        loss_args: Its arguments, e.g. {label_smoothing: 0.1} for CrossEntropyLoss or {delta: 0.5} for HuberLoss.
        optimizer: Optimizer class in `torch.optim`, e.g. SGD, Adam, AdamW.
        optimizer_args: Its other arguments, e.g. {momentum: 0.9, nesterov: true} for SGD.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        lr_scheduler: Scheduler class in `torch.optim.lr_scheduler` (StepLR, MultiStepLR, ExponentialLR,
            CosineAnnealingLR, ReduceLROnPlateau, LambdaLR...), or null for none.
        lr_scheduler_args: Its arguments, e.g. {step_size: 100, gamma: 0.5} for StepLR. LambdaLR's and
            MultiplicativeLR's `lr_lambda` is an expression of `epoch` such as "1 / (epoch + 1)".
        lr_scheduler_interval: Step the scheduler once per `epoch` or once per optimizer `step`.
        lr_scheduler_monitor: Metric that ReduceLROnPlateau watches.
        warmup: Linear warm-up of the learning rate over this many optimizer steps (or, below 1, this fraction
            of all training steps), multiplied into the schedule's learning rate; 0 for none.
        warmup_start_factor: The warm-up's first factor: step 0 uses lr x warmup_start_factor.
        init: Weight initialisation of conv and linear layers: xavier_uniform, xavier_normal, kaiming_uniform,
            kaiming_normal, normal, orthogonal; null keeps PyTorch's own.
        init_bias: Constant for the biases of those layers when `init` is set.
        init_nonlinearity: Nonlinearity for the kaiming/xavier gain; null detects the net's first activation.
        compile: Compile the network with `torch.compile` (it compiles on the first batch).
        channels_last: Keep a conv net's weights and image batches in channels-last memory format, which
            tensor cores and oneDNN run faster.
    """

    def __init__(
        self,
        net: str = "linear",
        net_args: dict[str, Any] | None = None,
        loss: str | None = None,
        loss_args: dict[str, Any] | None = None,
        optimizer: str = "SGD",
        optimizer_args: dict[str, Any] | None = None,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        lr_scheduler: str | None = None,
        lr_scheduler_args: dict[str, Any] | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str = "val/loss",
        warmup: float = 0.0,
        warmup_start_factor: float = 0.0,
        init: str | None = None,
        init_bias: float = 0.0,
        init_nonlinearity: str | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        if warmup < 0 or (warmup >= 1 and warmup != int(warmup)):
            raise ConfigError(f"model.warmup must be a number of steps or a fraction below 1, got {warmup}")
        if not 0 <= warmup_start_factor <= 1:
            raise ConfigError(f"model.warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        if isinstance((lr_scheduler_args or {}).get("lr_lambda"), str):
            lr_lambda(lr_scheduler_args["lr_lambda"])
        self.save_hyperparameters()
        check_plain(dict(self.hparams), "model")
        self.net_class = find_class("model", net, nn.Module)
        self.loss_fn: nn.Module | None = None  # when `loss` is unset, chosen in `setup` to follow the data
        self.classification = False
        if loss is not None:
            self._set_loss(loss)
        self.lr = lr  # an attribute, so that Lightning's learning-rate finder can set it
        self.optimizer_class = _torch_attr(torch.optim, "optimizer", optimizer, "SGD, Adam, AdamW")
        self.scheduler_class = (
            None
            if lr_scheduler is None
            else _torch_attr(torch.optim.lr_scheduler, "lr_scheduler", lr_scheduler, "StepLR, CosineAnnealingLR")
        )
        self.net: nn.Module | None = None
        self.metrics: nn.ModuleDict | None = None
        self.warmup: LinearWarmup | None = None
        self.scheduler: Any = None
        self._train = _TrainTotals()
        self._resumed: dict[str, Any] | None = None  # what a checkpoint to resume from carries besides weights
        self._eval_counts: dict[str, torch.Tensor] = {}  # per evaluation stage: counts of batches, see `_evaluate`
        self._epoch_done = False  # whether a grouped epoch's last batch ran (see `_grouped_step`)
        self._grouping_checked: int | None = None  # the trainer whose settings `_check_grouping` passed
        if not unset_sizes(self.net_class, net_args or {}):
            self._build_net(net_args or {})

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> MInterface:
        """Lightning's, for a checkpoint that holds plain values and tensors only (see `trust.load_checkpoint`)."""
        kwargs = checked_load_arguments(checkpoint_path, hparams_file, weights_only, kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, strict=strict, weights_only=True, **kwargs)

    @property
    def automatic_optimization(self) -> bool:
        """Lightning's, but off when the data module serves groups of batches (`DInterface.group_batches`): this
        module then takes an optimizer step per batch itself (`_grouped_step`). Lightning asks before any setup hook
        runs (to check the trainer's settings against it), so the checks of those settings are made here too."""
        group = self._group_batches()
        if group == 1:
            return self._automatic_optimization
        # Once per trainer (Lightning asks at every step), and for fitting only; off in the evaluations after a fit
        # too, so that trainer.global_step goes on counting the steps this module took.
        if self.trainer.state.fn == "fit" and self._grouping_checked != id(self.trainer):
            self._check_grouping(group)
            self._grouping_checked = id(self.trainer)
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, automatic_optimization: bool) -> None:
        self._automatic_optimization = automatic_optimization

    def _group_batches(self) -> int:
        """How many batches each training step gets from the data module: 1 without one."""
        trainer = getattr(self, "_trainer", None)  # LightningModule's own: its `trainer` raises when there is none
        if trainer is None:
            return 1
        return getattr(trainer.datamodule, "group_batches", 1)

    def _check_grouping(self, group: int) -> None:
        """A ConfigError for the settings that steps taken per batch of a group cannot follow exactly."""
        trainer = self.trainer
        with_group = f"with data.group_batches {group}, this module takes the optimizer steps itself,"
        if not self._automatic_optimization:
            raise ConfigError(f"data.group_batches {group} needs automatic optimization: use data.group_batches 1")
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches {trainer.accumulate_grad_batches}: {with_group} one per batch; "
                "for larger steps raise data.batch_size instead, or use data.group_batches 1"
            )
        if trainer.gradient_clip_val:
            raise ConfigError(
                f"trainer.gradient_clip_val {trainer.gradient_clip_val}: {with_group} and Lightning clips gradients "
                "in its own steps only; use data.group_batches 1 to clip gradients"
            )
        if isinstance(trainer.val_check_interval, float) and trainer.val_check_interval < 1:
            raise ConfigError(
                f"trainer.val_check_interval {trainer.val_check_interval}: {with_group} and Lightning takes the "
                "fraction of its own steps (groups), which falls between other batches than without groups; give "
                "the interval as a whole number of groups, or use data.group_batches 1"
            )
        for callback in trainer.checkpoint_callbacks:
            if any(saves_during_epochs(callback)):
                every, interval = saves_during_epochs(callback)
                given = f"every_n_train_steps {every}" if every else f"train_time_interval {interval}"
                raise ConfigError(
                    f"a checkpoint {given}: {with_group} and Lightning's ModelCheckpoint then saves every n of its own "
                    "steps (groups) only, and never on a time interval; save every_n_epochs, or use "
                    "data.group_batches 1"
                )
        if self.scheduler_class is torch.optim.lr_scheduler.ReduceLROnPlateau and self._schedule_per_step():
            raise ConfigError(
                f"ReduceLROnPlateau with lr_scheduler_interval step: {with_group} and the metric it watches is "
                "logged once per group; step it per epoch, or use data.group_batches 1"
            )

    def _schedule_per_step(self) -> bool:
        return self.hparams.lr_scheduler_interval == "step"

    def _plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def _set_loss(self, loss: str) -> None:
        self.loss_fn = _build_loss(loss, self.hparams.get("loss_args") or {})
        self.classification = isinstance(self.loss_fn, CLASSIFICATION_LOSSES)

    def _build_net(self, net_args: dict[str, Any]) -> None:
        if self.hparams.init is not None and net_args.get(PRETRAINED_ARG):
            raise ConfigError(f"model.init would overwrite the pretrained net_args.{PRETRAINED_ARG}: drop one of them")
        self.net = construct(self.net_class, f"model {self.hparams.net!r}", "model.net_args", net_args)
        if self.hparams.init is not None:
            from model._weight_init import init_weights

            init_weights(self.net, self.hparams.init, self.hparams.init_bias, self.hparams.init_nonlinearity)
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            self.net.compile()

    def setup(self, stage: str) -> None:
        """Size the network from the data module's description of its data (see `data_contract`), choose the loss
        when it is not set, check that the two fit, and create the metrics."""
        datamodule = self.trainer.datamodule
        dims = getattr(datamodule, "dims", None) or {}
        data = getattr(datamodule, "hparams", {}).get("dataset", type(datamodule).__name__)  # for messages
        sized = sized_net_args(
            self.net_class, self.hparams.get("net_args") or {}, dims, net=self.hparams.net, data=data
        )
        if self.net is None:
            # The checkpoint keeps the filled-in values, so that it loads without the data.
            self.save_hyperparameters({**self.hparams, "net_args": sized})
            self._build_net(sized)
        if not dims:
            if self.loss_fn is None:  # data served by plain loaders: the regression loss of old
                self._choose_loss(loss_for(dims, False, net=self.hparams.net, data=data))
            return
        if self.hparams.channels_last and "image_size" not in dims:
            raise ConfigError(
                f"model.channels_last is for conv nets on images, but the data ({data}) has no images: remove it"
            )
        # One input batch: for the model summary's sizes, TensorBoard's graph (`log_graph`) and export's tracing.
        self.example_input_array = example = torch.as_tensor(datamodule.example[0]).unsqueeze(0)
        name = self.hparams.net
        out = check_fits(self.net, self._batch_format(example.to(self.device)), dims["output_size"], name=name)
        log_probs = log_probabilities(out)
        if self.loss_fn is None:
            self._choose_loss(loss_for(dims, log_probs, net=name, data=data))
        check_task(self.classification, self.hparams.loss, dims, data, log_probs=log_probs, net=name)
        if self.classification and self.metrics is None:
            self.metrics = _classification_metrics(dims["num_classes"])

    def _choose_loss(self, loss: str) -> None:
        """Use `loss` and record it, so that the checkpoint loads with it without the data."""
        self.save_hyperparameters({**self.hparams, "loss": loss})
        self._set_loss(loss)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's prediction for `x`: its output, or the part of it that the rule of `outputs_and_items`
        picks (the first element of a tuple, the `logits` of a dict...)."""
        return prediction(self.net(self._batch_format(x)), self.hparams.net)

    def _batch_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if not self.automatic_optimization:
            return self._grouped_step(batch, batch_idx)
        x, y = batch
        y = self._targets(y)
        out = self(x)
        loss = self.loss_fn(out, y)
        self._log_train_loss(loss.detach(), len(x), last=batch_idx + 1 == self.trainer.num_training_batches)
        if self.metrics is not None:
            self._train.add_predictions(out.detach(), y)
        return loss

    def _grouped_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """A group of batches (`DInterface.group_batches`): one optimizer step per batch of `batch_size`, each as
        Lightning's automatic optimization takes it (zero the gradients, backward, step, then the warm-up and the
        schedulers stepped per step), until trainer.max_steps; the epoch's schedulers after its last batch."""
        trainer = self.trainer
        datamodule = trainer.datamodule
        x, y = batch
        y = self._targets(y)
        optimizer = self.optimizers()
        batches = list(zip(x.split(datamodule.batch_size), y.split(datamodule.batch_size), strict=True))
        chunks = batches[: max(0, trainer.max_steps - trainer.global_step)] if trainer.max_steps >= 0 else batches
        cut = len(chunks) < len(batches)
        for number, (xs, ys) in enumerate(chunks):
            out = self(xs)
            loss = self.loss_fn(out, ys)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self._after_optimizer_step()
            datamodule.count_trained(len(xs), cut=cut and number == len(chunks) - 1)
            self._train.add_loss(loss.detach(), len(xs))
            if self.metrics is not None:
                self._train.add_predictions(out.detach(), ys)
        last = batch_idx + 1 == trainer.num_training_batches or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last and not cut:
            self._epoch_done = True
            if self.scheduler is not None and not self._schedule_per_step() and not self._plateau():
                self.lr_scheduler_step(self.scheduler, None)
        if self._train.items and (last or logger_writes_this_step(trainer) or trainer.fast_dev_run):
            self.log("train/loss", self._train.take_loss(), prog_bar=True, batch_size=len(x))

    def _after_optimizer_step(self) -> None:
        """After an optimizer step of a group, what Lightning does after one of its own: the warm-up's next learning
        rate, then the schedulers that step per step."""
        if self._warmup_in_charge():
            self.warmup.apply(self.trainer.global_step)  # counted already: the LightningOptimizer's step counts it
        if self.scheduler is not None and self._schedule_per_step():
            self.lr_scheduler_step(self.scheduler, None)

    def _step_plateau_schedulers(self) -> None:
        """At the end of an epoch whose batches all ran, step ReduceLROnPlateau on its metric, after validation, as
        Lightning does (and, like it, not in the epoch a run resumed in: the metric is not in the checkpoint)."""
        trainer = self.trainer
        if not self._plateau() or not self._epoch_done or trainer.fit_loop.restarting:
            return
        monitor = self.hparams.lr_scheduler_monitor
        value = trainer.callback_metrics.get(monitor)
        if value is None:
            raise ConfigError(
                f"ReduceLROnPlateau watches {monitor}, which is not logged (logged: "
                f"{', '.join(trainer.callback_metrics) or 'nothing'}): set model.lr_scheduler_monitor"
            )
        self.lr_scheduler_step(self.scheduler, value)

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        """A classifier's class indices as the int64 the losses take (a dataset may give them as int32 or uint8)."""
        return y.long() if self.classification and not y.is_floating_point() else y

    def _log_train_loss(self, loss: torch.Tensor, batch_size: int, last: bool) -> None:
        """Log `train/loss`, the mean over the items since it was last logged, on the steps the logger writes
        (`trainer.log_every_n_steps`, after the optimizer step) and at the epoch's `last` batch: `self.log` costs
        more than a small model's whole step, so it is not called at every one."""
        self._train.add_loss(loss, batch_size)
        if last or logger_writes_this_step(self.trainer) or self.trainer.fast_dev_run:
            self.log("train/loss", self._train.take_loss(), prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """Log the loss and update the metrics; the outputs go to callbacks' `on_*_batch_end`."""
        x, y = batch
        y = self._targets(y)
        out = self(x)
        loss = self.loss_fn(out, y)
        # Batches, and those whose loss is nan, is inf, whose inputs or targets are not finite: counted on the
        # device, read once per epoch (`_check_finite`).
        flags = [loss.isnan().any(), loss.isinf().any(), _nonfinite(x, loss.device), _nonfinite(y, loss.device)]
        counts = torch.stack([torch.ones_like(flags[0]), *flags]).int()
        self._eval_counts[stage] = self._eval_counts.get(stage, 0) + counts
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(x), sync_dist=True)
        if self.metrics is not None:
            self.metrics[f"{stage}_metrics"].update(out, y)
        return out

    def _check_finite(self, stage: str) -> None:
        """Raise an error when the epoch's `stage` (val or test) loss was nan or inf, naming the split and when: a
        DataError when its data holds nan/inf values, else a ConfigError. EarlyStopping and ModelCheckpoint would
        take the loss for one that is merely bad, and end the run as if it had succeeded. On several devices, all
        raise it together."""
        counts = self._eval_counts.pop(stage, torch.zeros(5, dtype=torch.int, device=self.device))
        batches, nan, inf, inputs, targets = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        if not nan and not inf:
            return
        split = {"val": "validation", "test": "test"}[stage]
        trainer = self.trainer
        if trainer.sanity_checking:
            when = "in the sanity check before training"
        elif trainer.state.fn == "fit":
            when = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        else:
            when = "when testing" if stage == "test" else "when validating"
        found = f"the {split} loss is {'nan' if nan else 'inf'} {when} ({nan + inf} of {batches} batches)"
        if inputs or targets:
            parts = " and ".join(part for part, n in (("inputs", inputs), ("targets", targets)) if n)
            raise DataError(f"{found}: the {split} data holds nan or inf values in its {parts}; fix or drop them")
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else self.lr
        raise ConfigError(
            f"{found}, though its data is finite: the network's outputs or the loss overflow; lower the learning "
            f"rate (model.lr={lr:g}), clip gradients (--trainer.gradient_clip_val 1.0) or check that the loss suits "
            "the data"
        )

    def on_fit_start(self) -> None:
        # A resumed run draws random numbers (dropout) as the interrupted one would have: from the state the
        # checkpoint holds, set before anything of this run draws (the sanity check keeps the state as it found it).
        if self._resumed is not None:
            torch.set_rng_state(self._resumed["rng"]["torch"])
            if torch.cuda.is_available() and self._resumed["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(self._resumed["rng"]["cuda"])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Data served by plain loaders, without a data module to describe it: checkpoints record its input's shape.
        if self.example_input_array is None:
            self.example_input_array = torch.zeros_like(batch[0][:1], device="cpu")

    def on_train_start(self) -> None:
        # Only this run counts: not a finder's trial steps (lr_find, scale_batch_size) before it.
        self._train = _TrainTotals()
        if self.metrics is not None:
            for metric in self.metrics.values():
                metric.reset()
        # A resumed run carries on with the best accuracy so far.
        if self._resumed is not None:
            if self.metrics is not None and "val_acc_best" in self._resumed:
                self.metrics["val_acc_best"].update(self._resumed["val_acc_best"])
            self._resumed = None

    def on_train_epoch_start(self) -> None:
        self._epoch_done = False  # whether a grouped epoch's last batch ran (see `_grouped_step`)

    def on_train_epoch_end(self) -> None:
        self._log_train_accuracy()
        if not self.automatic_optimization:
            self._step_plateau_schedulers()

    def _log_train_accuracy(self) -> None:
        """Log `train/acc`, the epoch's accuracy over all devices, counted at each step without torchmetrics, whose
        update costs more than a small model's forward pass. Validation and test keep torchmetrics."""
        totals = self._train
        if self.metrics is None or totals.correct is None:
            return
        counts = torch.stack([totals.correct, torch.as_tensor(totals.seen, device=totals.correct.device)])
        correct, seen = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        totals.correct.zero_()
        totals.seen = 0
        # Equal on every device already: sync_dist averages equal values, and keeps Lightning from warning.
        self.log("train/acc", correct / seen, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._check_finite("val")
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._check_finite("test")
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        """Log the epoch's metrics (computed over all devices) and start afresh; the sanity check never counts."""
        if self.metrics is None:
            return
        metrics = self.metrics[f"{stage}_metrics"]
        values = metrics.compute()
        metrics.reset()
        if self.trainer.sanity_checking:
            return
        # The values are equal on every device already; sync_dist only tells Lightning so (it warns otherwise).
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        if stage == "val" and self.trainer.state.fn == "fit":
            self.metrics["val_acc_best"].update(values["val/acc"])
            self.log("val/acc_best", self.metrics["val_acc_best"].compute(), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        net_args = checkpoint["hyper_parameters"].get("net_args") or {}
        if net_args.get(PRETRAINED_ARG):
            checkpoint["hyper_parameters"]["net_args"] = {**net_args, PRETRAINED_ARG: None}
        if self.example_input_array is not None:  # for tracing the network on export
            record_input_shape(checkpoint, self.example_input_array)
        checkpoint["resume"] = {"rng": {"torch": torch.get_rng_state()}}
        if torch.cuda.is_available():
            checkpoint["resume"]["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.metrics is not None and self.metrics["val_acc_best"].update_count:
            checkpoint["resume"]["val_acc_best"] = self.metrics["val_acc_best"].compute()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        resumed = checkpoint.get("resume")
        rng = resumed.get("rng") if isinstance(resumed, dict) else None
        states = [rng.get("torch"), *(rng.get("cuda") or [])] if isinstance(rng, dict) else [None]
        if resumed is not None and not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in states):
            raise ConfigError(
                "the checkpoint's random state is not what this template writes (checkpoint['resume']['rng']); "
                "give another checkpoint"
            )
        self._resumed = resumed
        # A model loaded for use gets the example input of the data it was trained on, which Lightning's `to_onnx`
        # and `to_torchscript(method="trace")` trace with; a model set up on data has its own already.
        if self.example_input_array is None:
            shape = input_shape(self.hparams.get("net_args"), checkpoint.get(INPUT_SHAPE_KEY))
            self.example_input_array = None if shape is None else torch.zeros(1, *shape)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = _construct(
            self.optimizer_class,
            self.parameters(),
            lr=self.lr,
            **({"weight_decay": hp.weight_decay} if hp.weight_decay else {}),
            **(hp.optimizer_args or {}),
        )
        config: dict[str, Any] = {"optimizer": optimizer}
        self.scheduler = None
        if self.scheduler_class is not None:
            args = dict(hp.lr_scheduler_args or {})
            if isinstance(args.get("lr_lambda"), str):
                args["lr_lambda"] = lr_lambda(args["lr_lambda"])
            self.scheduler = _construct(self.scheduler_class, optimizer, **args)
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": hp.lr_scheduler_interval}
            if self.automatic_optimization:  # else this module steps it (see `_grouped_step`)
                config["lr_scheduler"]["monitor"] = hp.lr_scheduler_monitor
        # After the scheduler, which takes the learning rate it starts from from the optimizer.
        self.warmup = LinearWarmup(optimizer, self._warmup_steps(), hp.warmup_start_factor) if hp.warmup else None
        return config

    def _warmup_steps(self) -> int:
        warmup = self.hparams.warmup
        if warmup >= 1:
            return int(warmup)
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if math.isfinite(total) and self._group_batches() > 1 and trainer.max_epochs not in (None, -1):
            # Lightning counts the groups: the optimizer steps are those of the batches in them.
            total = trainer.datamodule.optimizer_steps(trainer.num_training_batches) * max(trainer.max_epochs, 1)
            total = min(total, trainer.max_steps) if trainer.max_steps != -1 else total
        if not math.isfinite(total):
            raise ConfigError(
                f"model.warmup {warmup} is a fraction of training, which has no set length: set "
                "trainer.max_epochs or trainer.max_steps, or give the warm-up in steps"
            )
        return max(1, round(warmup * total))

    def _warmup_in_charge(self) -> bool:
        """Whether the warm-up drives the learning rate: not when another scheduler (Lightning's LR finder) does."""
        ours = [self.scheduler] if self.scheduler is not None else []
        return self.warmup is not None and [c.scheduler for c in self.trainer.lr_scheduler_configs] == ours

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._warmup_in_charge():
            self.warmup.apply(self.trainer.global_step + 1)  # Lightning counts this step after the hook

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not self._warmup_in_charge():
            return super().lr_scheduler_step(scheduler, metric)
        with self.warmup.scheduling(self.trainer.global_step):
            super().lr_scheduler_step(scheduler, metric)


def _construct(cls: type, *args: Any, **kwargs: Any) -> Any:
    """`cls(*args, **kwargs)` for an optimizer or scheduler, with a wrong argument as a ConfigError naming it."""
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error


def _classification_metrics(num_classes: int) -> nn.ModuleDict:
    """Accuracy per split (and top-5 accuracy above 5 classes, for validation and test), and the best validation
    accuracy so far."""
    from torchmetrics import MaxMetric, MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    def collection(stage: str) -> MetricCollection:
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}/")

    # Keys are not the bare stage names. The training split's accuracy is counted by MInterface itself, per step.
    metrics = {f"{stage}_metrics": collection(stage) for stage in EVAL_STAGES}
    return nn.ModuleDict({**metrics, "val_acc_best": MaxMetric()})
