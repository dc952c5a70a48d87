"""Crash-safe checkpoints: atomic writes, a last.ckpt to resume from after a failure, a stop at a non-finite loss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import RaiseAt
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import AtomicCheckpointIO, FiniteLossGuard, ResumableCheckpoint, TrainingDiverged
from data.data_interface import DInterface
from model.model_interface import MInterface
from utils import ConfigError

# The line's 32 training points in batches of 4: 8 optimizer steps per epoch.
STEPS_PER_EPOCH = 8


def trainer(tmp_path: Path, callbacks: list[pl.Callback], **trainer_args: Any) -> pl.Trainer:
    """A quiet CPU Trainer that writes only what its callbacks write."""
    args = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return pl.Trainer(**{**args, **trainer_args}, default_root_dir=tmp_path, accelerator="cpu", callbacks=callbacks)


def data() -> DInterface:
    return DInterface(batch_size=4)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(value).all()) for value in state_dict.values())


class FailAt(MInterface):
    """The line's model, whose training step at `step` gives `loss * factor`, or raises `error` if one is set."""

    step: int = -1
    factor: float = 1.0
    error: BaseException | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step != self.step:
            return loss
        if self.error is not None:
            raise self.error
        return loss * self.factor


def fail_at(step: int, **attributes: Any) -> FailAt:
    model = FailAt()
    model.step = step
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


class Batches(pl.Callback):
    """The index of every training batch started."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.started.append(idx)


# AtomicCheckpointIO


def crashing_save(exception: BaseException):
    """A `torch.save` that writes a few bytes and then fails, as a crash mid-write."""

    def save(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise exception

    return save


@pytest.mark.parametrize("exception", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: BaseException
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    first = {"state_dict": {"w": torch.tensor([1.0, 2.0])}, "global_step": 3}
    io.save_checkpoint(first, path)
    monkeypatch.setattr(torch, "save", crashing_save(exception))
    with pytest.raises(type(exception)):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([9.0])}, "global_step": 4}, path)
    monkeypatch.undo()
    loaded = load(path)
    assert loaded["global_step"] == 3
    torch.testing.assert_close(loaded["state_dict"]["w"], first["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_save_replaces_the_checkpoint_and_creates_its_directory(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "run" / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, path)
    io.save_checkpoint({"state_dict": {}, "global_step": 2}, path)
    assert load(path) == {"state_dict": {}, "global_step": 2}
    assert io.load_checkpoint(path) == {"state_dict": {}, "global_step": 2}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_save_fsyncs_a_temporary_file_beside_the_target_before_renaming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, path)  # the directory exists: only the save is watched
    events: list[tuple[str, Any]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append(("fsync", (info.st_dev, info.st_ino)))
        fsync(fd)

    def recording_replace(source: Any, target: Any) -> None:
        info = os.stat(source)
        events.append(("replace", ((info.st_dev, info.st_ino), Path(source), Path(target))))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    io.save_checkpoint({"state_dict": {}, "global_step": 2}, path)
    monkeypatch.undo()
    assert load(path)["global_step"] == 2
    [(index, (temporary_file, source, target))] = [(i, e[1]) for i, e in enumerate(events) if e[0] == "replace"]
    assert target == path
    # On the target's filesystem, so that the rename is atomic rather than a copy that a crash can cut short.
    assert source.parent == path.parent
    assert ("fsync", temporary_file) in events[:index]  # its bytes are on disk before it takes the target's name
    directory = os.stat(path.parent)
    assert ("fsync", (directory.st_dev, directory.st_ino)) in events[index:]  # and then the rename


def test_a_trainer_with_atomic_checkpoint_io_writes_loadable_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)  # the net's start and the training order: the val loss then improves in epoch 1
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor="val/loss")
    fit = trainer(tmp_path, [checkpoint], max_epochs=2, plugins=[AtomicCheckpointIO()])
    fit.fit(MInterface(), data())
    assert isinstance(fit.strategy.checkpoint_io, AtomicCheckpointIO)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch=1-step=16.ckpt", "last.ckpt"]
    for name in names:
        assert load(tmp_path / "checkpoints" / name)["global_step"] == 2 * STEPS_PER_EPOCH


# FiniteLossGuard


@pytest.mark.parametrize(("factor", "shown"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_a_non_finite_loss_stops_training_before_the_weights_take_it(tmp_path: Path, factor: float, shown: str) -> None:
    model = fail_at(5, factor=factor)
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    with pytest.raises(TrainingDiverged) as raised:
        trainer(tmp_path, [FiniteLossGuard(), resumable]).fit(model, data())
    assert isinstance(raised.value, ConfigError)  # main.py prints it as one line
    assert str(raised.value) == (
        f"the training loss became {shown} at step 5 (epoch 0, batch 5): lower the learning rate (now "
        "model.lr=0.01), clip gradients (--trainer.gradient_clip_val 1.0) or check the data for nan/inf values"
    )
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]
    checkpoint = load(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 5
    assert all_finite(checkpoint["state_dict"])


def test_a_guard_that_reads_every_n_steps_names_the_first_non_finite_step_and_writes_no_checkpoint_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = fail_at(4, factor=float("-inf"))  # read at steps 2 and 5 (every 3 batches): found at step 5
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    with pytest.raises(TrainingDiverged) as raised:
        trainer(tmp_path, [FiniteLossGuard(check_every_n_steps=3), resumable]).fit(model, data())
    assert str(raised.value).startswith("the training loss became -inf at step 4 (epoch 0, batch 4): lower")
    assert not raised.value.weights_finite
    assert model.trainer.global_step == 5  # read late: the weights took step 4's loss...
    assert not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert list(tmp_path.glob("*.ckpt")) == []  # ...and no checkpoint holds them
    assert "the weights took the non-finite loss, so no last.ckpt was written" in capsys.readouterr().out


def test_a_guard_that_reads_every_n_steps_reads_before_each_checkpoint(tmp_path: Path) -> None:
    model = fail_at(4, factor=float("nan"))
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, monitor=None, every_n_train_steps=2)
    with pytest.raises(TrainingDiverged) as raised:
        trainer(tmp_path, [FiniteLossGuard(check_every_n_steps=5), resumable]).fit(model, data())
    assert str(raised.value).startswith("the training loss became nan at step 4 (epoch 0, batch 4): lower")
    assert model.trainer.global_step == 6  # found when saving after step 5, before the write
    checkpoint = load(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 4  # the save before the non-finite step: finite weights
    assert all_finite(checkpoint["state_dict"])
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=4.ckpt", "last.ckpt"]


def test_a_crash_after_a_non_finite_loss_not_yet_read_writes_no_last_ckpt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = fail_at(3, factor=float("nan"))
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    callbacks = [FiniteLossGuard(check_every_n_steps=6), resumable, RaiseAt(5, KeyboardInterrupt)]
    with pytest.raises(SystemExit):  # Ctrl+C after step 5, before the read after step 6
        trainer(tmp_path, callbacks).fit(model, data())
    assert list(tmp_path.glob("*.ckpt")) == []
    out = capsys.readouterr().out
    assert "Training stopped by KeyboardInterrupt at step 5; saving last.ckpt failed as well (the training loss " in out
    assert "became nan at step 3 (epoch 0, batch 3)" in out


def test_a_guard_that_reads_every_n_steps_stops_before_the_weights_take_a_loss_it_reads_at_once(
    tmp_path: Path,
) -> None:
    model = fail_at(5, factor=float("inf"))  # the third of steps 3 to 5: read before its backward
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    with pytest.raises(TrainingDiverged, match=r"became inf at step 5 \(epoch 0, batch 5\)"):
        trainer(tmp_path, [FiniteLossGuard(check_every_n_steps=3), resumable]).fit(model, data())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    checkpoint = load(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 5
    assert all_finite(checkpoint["state_dict"])


def test_a_guard_that_reads_every_n_steps_reads_at_the_epoch_end(tmp_path: Path) -> None:
    model = fail_at(7, factor=float("nan"))  # the last step of the epoch; 8 steps, read every 5
    with pytest.raises(TrainingDiverged, match=r"became nan at step 7 \(epoch 0, batch 7\)"):
        trainer(tmp_path, [FiniteLossGuard(check_every_n_steps=5)], enable_checkpointing=False).fit(model, data())
    assert model.trainer.global_step == STEPS_PER_EPOCH


def test_a_guard_checks_every_step_on_the_cpu_by_default(tmp_path: Path) -> None:
    guard = FiniteLossGuard()
    trainer(tmp_path, [guard], enable_checkpointing=False, log_every_n_steps=4).fit(MInterface(), data())
    assert guard._every == 1


def test_finite_losses_train_as_usual(tmp_path: Path) -> None:
    fit = trainer(tmp_path, [FiniteLossGuard()], enable_checkpointing=False)
    fit.fit(MInterface(), data())
    assert fit.global_step == STEPS_PER_EPOCH


# ResumableCheckpoint


def test_the_state_key_is_modelcheckpoints_while_set_up_and_after(tmp_path: Path) -> None:
    settings = {"monitor": "val/loss", "mode": "min", "every_n_train_steps": 3}
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last=True, **settings)
    before = resumable.state_key
    assert before == ModelCheckpoint(**settings).state_key.replace("ModelCheckpoint", "ResumableCheckpoint", 1)
    fit = trainer(tmp_path, [resumable], max_epochs=1)
    fit.fit(MInterface(), data())
    assert list(load(tmp_path / "last.ckpt")["callbacks"]) == [before]
    assert resumable.state_key == before


def test_ctrl_c_writes_last_ckpt_that_resumes_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    resumable = ResumableCheckpoint(dirpath=tmp_path, monitor="val/loss", filename="best-{epoch}")
    with pytest.raises(SystemExit):  # Lightning's answer to Ctrl+C: a graceful shutdown, then sys.exit(1)
        trainer(tmp_path, [resumable, RaiseAt(3, KeyboardInterrupt)]).fit(MInterface(), data())
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # save_last unset: still written
    assert load(tmp_path / "last.ckpt")["global_step"] == 3
    assert (
        "Training stopped by KeyboardInterrupt at step 3; resume with --ckpt_path last "
        f"({tmp_path / 'last.ckpt'})" in capsys.readouterr().out
    )
    batches = Batches()
    resumed = trainer(tmp_path, [ResumableCheckpoint(dirpath=tmp_path / "resumed"), batches])
    resumed.fit(MInterface(), data(), ckpt_path=tmp_path / "last.ckpt")
    assert batches.started == [3, 4, 5, 6, 7]  # the rest of the epoch, no more
    assert resumed.global_step == STEPS_PER_EPOCH


def test_last_ckpt_is_a_real_file_with_the_failing_state_under_save_last_link(tmp_path: Path) -> None:
    resumable = ResumableCheckpoint(dirpath=tmp_path, save_last="link", every_n_train_steps=2, save_top_k=-1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [resumable]).fit(fail_at(3, error=RuntimeError("boom")), data())
    assert not (tmp_path / "last.ckpt").is_symlink()
    assert load(tmp_path / "last.ckpt")["global_step"] == 3
    assert load(tmp_path / "epoch=0-step=2.ckpt")["global_step"] == 2


def test_a_failure_before_the_first_step_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    resumable = ResumableCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [resumable]).fit(fail_at(0, error=RuntimeError("boom")), data())
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "resume with" not in capsys.readouterr().out
