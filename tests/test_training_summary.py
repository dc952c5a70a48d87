"""The TrainingSummary callback, on short in-process fits (the straight line, and a classifier for its metrics)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from callbacks import TrainingSummary
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  ")


def fit(
    tmp_path: Path,
    summary: TrainingSummary,
    *callbacks: Callback,
    max_epochs: int = 3,
    progress_bar: bool = False,
    model: MInterface | None = None,
    data: DInterface | None = None,
    **trainer_args: Any,
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=[summary, *callbacks],
        **trainer_args,
    )
    trainer.fit(model or MInterface(), data or DInterface())
    return trainer


def summary_lines(out: str) -> tuple[str, list[str], str]:
    """The start line, the epoch lines and the final line that the callback printed."""
    lines = [ln.strip() for ln in out.splitlines()]  # a progress bar ends its lines with "\r" and blanks
    start = [ln for ln in lines if ln.startswith("Training ")]
    end = [ln for ln in lines if ln.startswith("Trained ")]
    assert len(start) == 1 and len(end) == 1, out
    return start[0], [ln for ln in lines if EPOCH_LINE.match(ln)], end[0]


def test_summary_reports_the_run_the_chosen_epochs_and_the_best_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = ModelCheckpoint(monitor="val/loss")
    trainer = fit(tmp_path, TrainingSummary(every_n_epochs=2), checkpoint)
    start, epochs, end = summary_lines(capsys.readouterr().out)

    datamodule = trainer.datamodule
    assert start == (
        f"Training linear (2 parameters, 2 trainable) on line: {len(datamodule.train_set)} train / "
        f"{len(datamodule.val_set)} val items, 3 epochs, cpu x1, precision 32-true"
    )

    assert [EPOCH_LINE.match(ln).groups() for ln in epochs] == [("2", "3"), ("3", "3")]
    metrics = trainer.callback_metrics
    expected = f"epoch 3/3  train/loss {float(metrics['train/loss']):.4g}  val/loss {float(metrics['val/loss']):.4g}"
    assert epochs[-1].startswith(expected + "  lr 1.00e-02  "), epochs[-1]
    assert re.search(r"  \d+\.\d s$", epochs[-1])

    final = re.fullmatch(r"Trained 3 epochs \((\d+) steps\) in \d+\.\d s; best val/loss (\S+) at checkpoint (.+)", end)
    assert final, end
    steps, score, path = final.groups()
    assert int(steps) == trainer.global_step > 0
    assert score == f"{float(checkpoint.best_model_score):.4g}"
    assert path == checkpoint.best_model_path and Path(path).is_file()
    assert "stopped early" not in end


def test_every_n_epochs_0_prints_no_epoch_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = fit(tmp_path, TrainingSummary(every_n_epochs=0))
    start, epochs, end = summary_lines(capsys.readouterr().out)
    assert start.startswith("Training linear (2 parameters, 2 trainable) on line: ")
    assert epochs == []
    assert end.startswith(f"Trained 3 epochs ({trainer.global_step} steps) in ")
    assert end.endswith(f"; checkpoint {trainer.checkpoint_callback.best_model_path}")  # no monitor, so no score


def test_negative_every_n_epochs_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every_n_epochs must be >= 0, got -1"):
        TrainingSummary(every_n_epochs=-1)


def test_early_stopping_is_reported_with_the_last_epoch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    early_stopping = EarlyStopping(monitor="val/loss", patience=0, min_delta=10.0)
    trainer = fit(tmp_path, TrainingSummary(), early_stopping, max_epochs=10)
    start, epochs, end = summary_lines(capsys.readouterr().out)
    completed = trainer.current_epoch
    assert 0 < completed < 10
    assert start.endswith(", 10 epochs, cpu x1, precision 32-true")
    assert [EPOCH_LINE.match(ln).groups() for ln in epochs] == [(str(n), "10") for n in range(1, completed + 1)]
    assert end.startswith(f"Trained {completed} epoch")
    assert end.endswith("; stopped early by EarlyStopping on val/loss")


def test_lines_pass_the_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = fit(tmp_path, TrainingSummary(), max_epochs=2, progress_bar=True)
    out = capsys.readouterr().out
    assert "Epoch 1: 100%" in out  # the bar was drawn
    start, epochs, end = summary_lines(out)
    assert start.startswith("Training linear (2 parameters, 2 trainable) on line: ")
    assert [EPOCH_LINE.match(ln).groups() for ln in epochs] == [("1", "2"), ("2", "2")]
    assert end.startswith(f"Trained 2 epochs ({trainer.global_step} steps) in ")


def test_epoch_lines_hold_that_epochs_training_metrics_and_learning_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # train/acc is logged in the module's on_train_epoch_end, after the callbacks' one; StepLR halves the rate
    # at each epoch's end, before that hook.
    model = MInterface(
        net="mlp", loss="CrossEntropyLoss", lr_scheduler="StepLR", lr_scheduler_args={"step_size": 1, "gamma": 0.5}
    )
    data = DInterface(dataset="synthetic")
    trainer = fit(
        tmp_path, TrainingSummary(), max_epochs=2, model=model, data=data, limit_train_batches=2, limit_val_batches=1
    )
    _, epochs, _ = summary_lines(capsys.readouterr().out)
    assert len(epochs) == 2 and all("train/acc " in ln for ln in epochs)
    assert f"  train/acc {float(trainer.callback_metrics['train/acc']):.4g}  " in epochs[1]
    assert "  lr 1.00e-02  " in epochs[0] and "  lr 5.00e-03  " in epochs[1]
