"""data.group_batches K: K batches per Lightning step, one optimizer step per batch. The same batches in the same
order, the same learning rate at each step and the same weights as K = 1, bit for bit."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import RaiseAt, run_main

from callbacks import AtomicCheckpointIO, FiniteLossGuard, ResumableCheckpoint, TrainingDiverged
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError

# 200 blobs, 120 of them train: 8 batches of 16 per epoch, the last one of 8 items.
BLOBS = {"dataset": "synthetic", "dataset_args": {"num_samples": 200, "num_features": 6, "num_classes": 3}}
DATA = {**BLOBS, "batch_size": 16}
MLP = {"net": "mlp", "net_args": {"hidden_sizes": [16], "dropout": 0.5}, "loss": "CrossEntropyLoss"}
BATCHES = 8


class Record(pl.Callback):
    """The learning rate of every optimizer step, and the train metrics logged at each epoch's end."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.epochs: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After the epoch's last training step, before validation: train/loss of the epoch's last window.
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.epochs.append({"train/loss": float(trainer.callback_metrics["train/loss"])})

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0 and "train/acc" in trainer.callback_metrics:
            self.epochs[-1]["train/acc"] = float(trainer.callback_metrics["train/acc"])


def fit(
    group: int, epochs: int = 2, model: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
    directory: Path | None = None, callbacks: tuple[pl.Callback, ...] = (), ckpt_path: str | None = None,
    **trainer: Any,
) -> tuple[MInterface, pl.Trainer, Record]:  # fmt: skip
    """Train as main.py does (seeded, deterministic) with data.group_batches `group`."""
    pl.seed_everything(42, verbose=False)
    record = Record()
    checkpoints = [] if directory is None else [ResumableCheckpoint(dirpath=directory, save_last=True)]
    module = MInterface(**(model or MLP))
    run = pl.Trainer(
        max_epochs=epochs, deterministic=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", enable_checkpointing=directory is not None, default_root_dir=directory,
        plugins=[AtomicCheckpointIO()], log_every_n_steps=1000, num_sanity_val_steps=0,
        callbacks=[record, *checkpoints, *callbacks], **trainer,
    )  # fmt: skip
    run.fit(module, datamodule=DInterface(**(data or DATA), group_batches=group), ckpt_path=ckpt_path)
    return module, run, record


def assert_same_weights(a: MInterface, b: MInterface) -> None:
    expected, got = a.state_dict(), b.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key}: max difference {(expected[key] - got[key]).abs().max()}"


@pytest.mark.parametrize("group", [4, 3])  # 4 divides the epoch's 8 batches, 3 does not (groups of 3, 3 and 2)
def test_grouped_steps_train_exactly_as_one_batch_per_step(group: int) -> None:
    single, single_run, single_record = fit(1)
    grouped, grouped_run, grouped_record = fit(group)
    assert grouped_run.num_training_batches == -(-BATCHES // group)  # Lightning's steps: the groups
    assert single_run.global_step == grouped_run.global_step == 2 * BATCHES  # optimizer steps
    assert_same_weights(single, grouped)
    assert grouped_record.lrs == single_record.lrs and len(grouped_record.lrs) == 2 * BATCHES
    assert len(grouped_record.epochs) == 2
    for ours, theirs in zip(grouped_record.epochs, single_record.epochs, strict=True):
        assert ours.keys() == theirs.keys() and theirs["train/loss"] > 0
        assert ours == pytest.approx(theirs, rel=1e-6)
    assert grouped.automatic_optimization is False and single.automatic_optimization is True


SCHEDULES = {
    "warmup and cosine per step": {
        "warmup": 5, "lr_scheduler": "CosineAnnealingLR", "lr_scheduler_args": {"T_max": 16},
        "lr_scheduler_interval": "step",
    },
    "warmup fraction and StepLR per epoch": {
        "warmup": 0.3, "warmup_start_factor": 0.1, "lr_scheduler": "StepLR",
        "lr_scheduler_args": {"step_size": 1, "gamma": 0.5},
    },
    "OneCycle per step": {
        "lr_scheduler": "OneCycleLR", "lr_scheduler_args": {"max_lr": 0.5, "total_steps": 24},
        "lr_scheduler_interval": "step",
    },
    "ReduceLROnPlateau on val/loss": {
        "lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_args": {"patience": 0, "factor": 0.5, "threshold": 0.5},
    },
}  # fmt: skip


@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_warmup_and_schedules_give_every_step_the_same_learning_rate(schedule: dict[str, Any]) -> None:
    model = {**MLP, "optimizer": "SGD", "lr": 0.2, **schedule}
    single, single_run, single_record = fit(1, epochs=3, model=model)
    grouped, grouped_run, grouped_record = fit(3, epochs=3, model=model)
    assert len(single_record.lrs) == 3 * BATCHES
    assert grouped_record.lrs == single_record.lrs
    assert len(set(single_record.lrs)) > 1  # the schedule does change the learning rate
    # The rate the next step would use, which the checkpoint keeps.
    final = [run.optimizers[0].param_groups[0]["lr"] for run in (single_run, grouped_run)]
    assert final[0] == final[1]
    assert_same_weights(single, grouped)


@pytest.mark.parametrize("max_steps", [6, 11])  # within the first group of 4's second group, and in epoch 1
def test_max_steps_within_a_group_stops_at_that_step(max_steps: int) -> None:
    single, single_run, single_record = fit(1, epochs=5, max_steps=max_steps)
    grouped, grouped_run, grouped_record = fit(4, epochs=5, max_steps=max_steps)
    assert single_run.global_step == grouped_run.global_step == max_steps
    assert len(grouped_record.lrs) == max_steps
    assert_same_weights(single, grouped)


class Crash(Exception):
    """A failure mid-training, after which ResumableCheckpoint writes last.ckpt."""


@pytest.mark.parametrize("step", [3, 8, 14])  # mid-epoch 0, the end of epoch 0, mid-epoch 1 (groups of 3: 3, 6, 8...)
def test_a_grouped_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path: Path, step: int) -> None:
    model = {**MLP, "warmup": 6, "lr_scheduler": "StepLR", "lr_scheduler_args": {"step_size": 5, "gamma": 0.5}}
    model["lr_scheduler_interval"] = "step"
    whole, whole_run, whole_record = fit(3, epochs=3, model=model, directory=tmp_path / "whole")
    with pytest.raises(Crash):
        fit(3, epochs=3, model=model, directory=tmp_path / "parts", callbacks=(RaiseAt(step, Crash),))
    last = tmp_path / "parts" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == step
    parts = tmp_path / "parts"
    resumed, resumed_run, resumed_record = fit(3, epochs=3, model=model, directory=parts, ckpt_path=str(last))
    assert resumed_run.global_step == whole_run.global_step == 3 * BATCHES
    assert resumed_record.lrs == whole_record.lrs[step:]
    assert_same_weights(whole, resumed)


def test_a_diverged_loss_within_a_group_stops_at_its_step_and_resumes_exactly(tmp_path: Path) -> None:
    """The NaN guard stops at the exact optimizer step within a group; last.ckpt then holds the steps before it, and
    the place in the data after them, so a resumed run takes the rest of the group."""

    class NanAt(pl.Callback):
        def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
            if trainer.global_step == 5:
                loss.data.fill_(float("nan"))

    # Without dropout: the failed step drew its masks already, with or without groups.
    model = {**MLP, "net_args": {"hidden_sizes": [16]}, "lr_scheduler": "StepLR", "lr_scheduler_interval": "step"}
    model["lr_scheduler_args"] = {"step_size": 3, "gamma": 0.5}
    whole, _, whole_record = fit(4, epochs=2, model=model, directory=tmp_path / "whole")
    with pytest.raises(TrainingDiverged, match=r"at step 5 \(epoch 0"):
        fit(4, epochs=2, model=model, directory=tmp_path / "parts", callbacks=(NanAt(), FiniteLossGuard()))
    last = tmp_path / "parts" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    resumed, run, record = fit(4, epochs=2, model=model, directory=tmp_path / "parts", ckpt_path=str(last))
    assert run.global_step == 2 * BATCHES and record.lrs == whole_record.lrs[5:]
    assert_same_weights(whole, resumed)


def refused(message: str, group: int = 2, model: dict[str, Any] | None = None, **trainer: Any) -> None:
    """Fitting with data.group_batches `group` raises a ConfigError with `message`, before any step."""
    steps = Record()
    with pytest.raises(ConfigError, match=message):
        fit(group, model=model, callbacks=(steps,), **trainer)
    assert steps.lrs == []


def test_settings_grouped_steps_cannot_follow_are_refused(tmp_path: Path) -> None:
    refused(
        r"accumulate_grad_batches 2: with data.group_batches 2, .* raise data.batch_size", accumulate_grad_batches=2
    )
    refused(r"gradient_clip_val 1.0: .* use data.group_batches 1 to clip gradients", gradient_clip_val=1.0)
    refused(r"val_check_interval 0.5: .* a whole number of groups", val_check_interval=0.5)
    every = (pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4),)
    with pytest.raises(ConfigError, match=r"a checkpoint every_n_train_steps 4: .* save every_n_epochs, or use"):
        fit(2, callbacks=every, directory=tmp_path)
    timed = (pl.callbacks.ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=1)),)
    with pytest.raises(ConfigError, match=r"a checkpoint train_time_interval 0:00:01: .* never on a time interval"):
        fit(2, callbacks=timed, directory=tmp_path)
    assert not list(tmp_path.iterdir())
    plateau = {**MLP, "lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_interval": "step"}
    refused(r"ReduceLROnPlateau with lr_scheduler_interval step: .* step it per epoch", model=plateau)
    with pytest.raises(ConfigError, match=r"data.group_batches must be >= 1, got 0"):
        DInterface(**DATA, group_batches=0)
    with pytest.raises(ConfigError, match=r"group_batches 2 needs the training data in memory: use data.in_memory"):
        DInterface(**DATA, in_memory="off", group_batches=2)


def test_a_checkpoint_resumes_with_the_group_size_it_was_written_with(tmp_path: Path) -> None:
    with pytest.raises(Crash):
        fit(2, directory=tmp_path, callbacks=(RaiseAt(4, Crash),))
    last = str(tmp_path / "last.ckpt")
    for group in (1, 4):
        with pytest.raises(ConfigError, match=rf"written by training with data.group_batches 2: resume it with "
                           rf"--data.group_batches 2 \(not {group}\)"):  # fmt: skip
            fit(group, directory=tmp_path, ckpt_path=last)
    # A checkpoint of ungrouped training (which records no group size) resumes ungrouped only.
    with pytest.raises(Crash):
        fit(1, directory=tmp_path / "single", callbacks=(RaiseAt(4, Crash),))
    with pytest.raises(ConfigError, match=r"group_batches 1: resume it with --data.group_batches 1 \(not 2\)"):
        fit(2, directory=tmp_path / "single", ckpt_path=str(tmp_path / "single" / "last.ckpt"))


def test_a_checkpoint_of_max_steps_within_a_group_is_not_resumed(tmp_path: Path) -> None:
    fit(4, epochs=3, directory=tmp_path, max_steps=6)
    last = tmp_path / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    with pytest.raises(ConfigError, match=r"trainer.max_steps stopped training within a group .* skip the rest"):
        fit(4, epochs=3, directory=tmp_path, ckpt_path=str(last))


def test_only_the_training_loader_groups() -> None:
    data = DInterface(**DATA, group_batches=3)
    data.setup("fit")
    train = [len(x) for x, _ in data.train_dataloader()]
    assert train == [48, 48, 24]
    assert {len(x) for x, _ in data.val_dataloader()} <= {16, 8}
    ungrouped = DInterface(**DATA)
    ungrouped.setup("fit")
    grouped_items = torch.cat([x for x, _ in data.train_dataloader()])
    single_items = torch.cat([x for x, _ in ungrouped.train_dataloader()])
    assert torch.equal(grouped_items, single_items)


def test_finders_refuse_grouped_batches(tmp_path: Path) -> None:
    for command in ("lr_find", "scale_batch_size"):
        run = run_main(command, "--model", "mlp", "--data", "synthetic", "--data.group_batches", "4", cwd=tmp_path)
        assert run.returncode == 2, run.stderr[-2000:]
        assert run.stderr.strip().splitlines()[-1] == (
            f"error: {command} measures one optimizer step per batch: remove data.group_batches (4)"
        )
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_the_command_line_trains_grouped_to_the_same_test_accuracy(tmp_path: Path) -> None:
    results = []
    for group in ("1", "4"):
        (tmp_path / group).mkdir()
        run = run_main(
            "--model", "mlp", "--data", "synthetic", "--data.group_batches", group, "--trainer.max_epochs", "2",
            cwd=tmp_path / group,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert "test/acc" in run.stdout
        results.append(json.loads((run.run_dir / "results.json").read_text()))
    single, grouped = results
    assert grouped["test"]["test/acc"] == pytest.approx(single["test"]["test/acc"], abs=1e-6)
    assert grouped["test"]["test/loss"] == pytest.approx(single["test"]["test/loss"], abs=1e-6)


def test_data_that_auto_serves_item_by_item_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("data.data_interface.AUTO_LIMIT_BYTES", 0)  # as if the data were too large to hold
    data = DInterface(**DATA, group_batches=2)
    data.setup("fit")
    with pytest.raises(ConfigError, match=r"group_batches 2 needs the training data in memory, and 'synthetic' takes"):
        data.train_dataloader()
    assert len(next(iter(data.val_dataloader()))[0]) == 16  # evaluation is served item by item, as without groups


def test_the_evaluations_after_a_grouped_fit_see_the_steps_it_took() -> None:
    module, run, _ = fit(4)
    run.validate(module, datamodule=run.datamodule, verbose=False)
    # What results.json and the figures log their final values at: the optimizer steps, not 0.
    assert run.global_step == 2 * BATCHES


def test_a_checkpoint_callback_of_another_kind_is_no_reason_to_refuse_groups(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    single, _, _ = fit(1)
    on_exception = OnExceptionCheckpoint(dirpath=tmp_path / "on_exception")
    grouped, run, _ = fit(4, directory=tmp_path / "checkpoints", callbacks=(on_exception,))
    assert run.global_step == 2 * BATCHES
    assert_same_weights(single, grouped)
