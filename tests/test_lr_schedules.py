"""Learning-rate schedules, warm-up and the optimizer's settings: the learning rates really used, step by step."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from data.data_interface import DInterface
from model._lr_schedule import lr_lambda
from model.model_interface import MInterface
from utils import ConfigError

LR = 0.1
# The line's 32 training points in batches of 4: 8 optimizer steps per epoch.
STEPS_PER_EPOCH = 8


class RecordLR(pl.Callback):
    """The learning rate each optimizer step really used, read from the optimizer as it steps."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def fit(tmp_path, epochs: int = 5, accumulate: int = 1, **model_args: Any) -> tuple[list[float], list[float]]:
    """Train the line; the learning rate of each optimizer step, and what LearningRateMonitor logged per step."""
    record, monitor = RecordLR(), LearningRateMonitor(logging_interval="step")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        accumulate_grad_batches=accumulate,
        callbacks=[record, monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = MInterface(optimizer="SGD", lr=LR, **model_args)
    trainer.fit(model, DInterface(batch_size=4))
    return record.lrs, monitor.lrs["lr-SGD"]


def assert_lrs(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a == pytest.approx(e, rel=1e-9, abs=1e-12), f"step {step}: lr {a}, expected {e}"


def warm(step: int, steps: int, start: float = 0.0) -> float:
    return 1.0 if step >= steps else start + (1 - start) * step / steps


def test_warmup_then_cosine_decay_per_step(tmp_path) -> None:
    total = 5 * STEPS_PER_EPOCH
    used, logged = fit(
        tmp_path,
        lr_scheduler="CosineAnnealingLR",
        lr_scheduler_args={"T_max": total},
        lr_scheduler_interval="step",
        warmup=10,
    )
    expected = [LR * warm(k, 10) * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
    assert_lrs(used, expected)
    assert_lrs(logged, expected)  # what TensorBoard shows is what the optimizer used
    assert used[0] == 0 and used[5] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * 5 / total)) / 2)


def test_warmup_fraction_with_an_epoch_wise_step_schedule(tmp_path) -> None:
    # A quarter of 40 steps is 10 steps of warm-up, starting at 0.1 x lr; StepLR halves the rate every 2 epochs.
    used, logged = fit(
        tmp_path, lr_scheduler="StepLR", lr_scheduler_args={"step_size": 2, "gamma": 0.5}, warmup=0.25,
        warmup_start_factor=0.1,
    )  # fmt: skip
    expected = [LR * warm(k, 10, 0.1) * 0.5 ** (k // STEPS_PER_EPOCH // 2) for k in range(5 * STEPS_PER_EPOCH)]
    assert_lrs(used, expected)
    assert_lrs(logged, expected)


@pytest.mark.parametrize(
    ("scheduler", "args", "per_epoch"),
    [
        ("MultiStepLR", {"milestones": [1, 3], "gamma": 0.1}, [1, 0.1, 0.1, 0.01, 0.01]),
        ("ExponentialLR", {"gamma": 0.5}, [1, 0.5, 0.25, 0.125, 0.0625]),
        ("LambdaLR", {"lr_lambda": "1 / (epoch + 1)"}, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]),
        # Patience 0 and an improvement threshold no loss can meet: halved after every epoch but the first.
        (
            "ReduceLROnPlateau",
            {"factor": 0.5, "patience": 0, "threshold": 10.0, "threshold_mode": "abs"},
            [1, 1, 0.5, 0.25, 0.125],
        ),
    ],
)
def test_epoch_wise_schedules_combine_with_warmup(tmp_path, scheduler: str, args: dict, per_epoch: list) -> None:
    used, _ = fit(tmp_path, lr_scheduler=scheduler, lr_scheduler_args=args, warmup=4)
    expected = [LR * warm(k, 4) * per_epoch[k // STEPS_PER_EPOCH] for k in range(5 * STEPS_PER_EPOCH)]
    assert_lrs(used, expected)


def test_lambda_schedule_per_step_without_warmup(tmp_path) -> None:
    used, _ = fit(
        tmp_path, epochs=2, lr_scheduler="LambdaLR", lr_scheduler_args={"lr_lambda": "0.9 ** step"},
        lr_scheduler_interval="step",
    )  # fmt: skip
    assert_lrs(used, [LR * 0.9**k for k in range(2 * STEPS_PER_EPOCH)])


def test_warmup_counts_optimizer_steps_under_gradient_accumulation(tmp_path) -> None:
    # Two batches per optimizer step: 4 steps per epoch, 8 in all, the first 6 warming up.
    used, _ = fit(tmp_path, epochs=2, accumulate=2, warmup=6)
    assert_lrs(used, [LR * warm(k, 6) for k in range(8)])


def test_weight_decay_and_optimizer_arguments_reach_the_optimizer() -> None:
    optimizer = MInterface(
        optimizer="AdamW", lr=0.003, weight_decay=0.05, optimizer_args={"betas": [0.8, 0.9]}
    ).configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["weight_decay"] == 0.05 and tuple(optimizer.defaults["betas"]) == (0.8, 0.9)
    rmsprop = MInterface(optimizer="RMSprop", optimizer_args={"alpha": 0.9}).configure_optimizers()["optimizer"]
    assert isinstance(rmsprop, torch.optim.RMSprop) and rmsprop.defaults["alpha"] == 0.9


def test_gradient_clipping_bounds_the_update(tmp_path) -> None:
    # One SGD step at lr 1 moves the parameters by exactly the clipped gradient.
    model = MInterface(lr=1.0)
    before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, gradient_clip_val=0.01, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, DInterface(batch_size=4))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_lr_lambda_expressions() -> None:
    assert [lr_lambda("1/(epoch+1)")(e) for e in range(3)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert lr_lambda("1 if step < 10 else 0.1")(12) == 0.1
    assert lr_lambda("0.5 * (1 + cos(pi * min(epoch, 10) / 10))")(10) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('echo pwned')", "Call is not allowed"),
        ("__import__('os')", "unknown name '__import__'"),
        ("().__class__", "Attribute is not allowed"),
        ("1 / (epoch +", "not a valid expression"),
        ("1 / epoch", "fails at epoch=0: .*division by zero"),
        ("lr * 2", "unknown name 'lr'"),
        ("9 ** 9 ** 9", "fails at epoch=0: .*out of range"),  # would compute for ever in integers
        ("floor(1e300) ** floor(1e300)", "fails at epoch=0"),
        ("'a' * 10 ** 12", "only numbers may appear"),
    ],
)
def test_lr_lambda_refuses_anything_but_arithmetic(expression: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MInterface(lr_scheduler="LambdaLR", lr_scheduler_args={"lr_lambda": expression})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": -1}, "model.warmup must be"),
        ({"warmup": 2.5}, "model.warmup must be"),
        ({"warmup_start_factor": 1.5}, "warmup_start_factor must be in"),
    ],
)
def test_bad_warmup_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MInterface(**kwargs)


def test_wrong_scheduler_or_optimizer_argument_names_the_class() -> None:
    with pytest.raises(ConfigError, match="StepLR: .*step_sise"):
        MInterface(lr_scheduler="StepLR", lr_scheduler_args={"step_sise": 3}).configure_optimizers()
    with pytest.raises(ConfigError, match="SGD: .*momentum"):
        MInterface(optimizer_args={"momentum": -1}).configure_optimizers()
