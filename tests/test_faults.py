"""Faults of the machine rather than of the user: a full disk, an unwritable place, a checkpoint that a crash
damaged. Each ends in one line that names the file and the system's reason, and keeps what was written before."""

from __future__ import annotations

import errno
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import ROOT, Run, run_main

import export
import files
from callbacks import AtomicCheckpointIO, ResumableCheckpoint
from data.data_interface import DInterface
from files import WriteError, make_dir, remove_stale_temporaries
from model.model_interface import MInterface
from runs import latest_checkpoint
from utils import ConfigError

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
TOO_LARGE = os.strerror(errno.EFBIG)  # "File too large": what a write past RLIMIT_FSIZE gets


class FullFile:
    """A file opened for writing on a `Disk`: a write past the room left fails with ENOSPC, as the system's does."""

    def __init__(self, file: Any, disk: Disk) -> None:
        self.file, self.disk = file, disk

    def write(self, data: bytes) -> int:
        if len(data) > self.disk.room:
            raise OSError(errno.ENOSPC, NO_SPACE)
        self.disk.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


class Disk:
    """What `files.write_atomically` writes to, with `room` bytes left. torch.save on it raises what it raises on a
    real full disk: its RuntimeError ("unexpected pos") while handling the OSError."""

    room: float = float("inf")

    def open(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        file = open(path, mode, *args, **kwargs)
        return FullFile(file, self) if "w" in mode else file


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    disk = Disk()
    monkeypatch.setattr(files, "open", disk.open, raising=False)
    return disk


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


# Saving checkpoints


def test_a_full_disk_is_one_error_naming_the_checkpoint_and_the_previous_one_stays(tmp_path: Path, disk: Disk) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 3}, path)
    disk.room = 1000
    with pytest.raises(WriteError) as raised:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}, "global_step": 4}, path)
    assert str(raised.value) == f"cannot write {path}: {NO_SPACE}"
    assert isinstance(raised.value, ConfigError)  # main.py prints it as one line
    assert load(path)["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


class FillDiskAt(pl.Callback):
    """The disk is full from optimizer step `step` on."""

    def __init__(self, disk: Disk, step: int) -> None:
        self.disk, self.step = disk, step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            self.disk.room = 0


class FailAt(MInterface):
    """The line's model, whose training step at optimizer step 3 raises `error`."""

    error: BaseException | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.error is not None and self.trainer.global_step == 3:
            raise self.error
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("training_error", [None, RuntimeError("boom")])
def test_the_save_on_failure_never_hides_the_error_that_stopped_training(
    tmp_path: Path, disk: Disk, capsys: pytest.CaptureFixture, training_error: BaseException | None
) -> None:
    # Checkpoints every 2 steps; the disk fills at step 3, so the step-4 save fails (or the training step itself),
    # and then the save of last.ckpt on failure as well.
    model = FailAt()
    model.error = training_error
    resumable = ResumableCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True, monitor=None)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[resumable, FillDiskAt(disk, 3)], plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    with pytest.raises(Exception) as raised:
        trainer.fit(model, DInterface(batch_size=4))
    step = 3 if training_error else 4
    if training_error:
        assert raised.value is training_error
    else:
        assert type(raised.value) is WriteError
        assert str(raised.value) == f"cannot write {tmp_path / f'epoch=0-step={step}.ckpt'}: {NO_SPACE}"
    assert not isinstance(raised.value.__context__, WriteError)  # the failed save on failure is not in its chain
    stopped = "RuntimeError" if training_error else "WriteError"
    assert (
        f"Training stopped by {stopped} at step {step}; saving last.ckpt failed as well (cannot write "
        f"{tmp_path / 'last.ckpt'}: {NO_SPACE}); --ckpt_path last resumes from the newest checkpoint saved before"
    ) in capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert load(tmp_path / "last.ckpt")["global_step"] == 2  # the state saved before, intact


def test_a_save_deletes_the_temporary_files_of_processes_that_died_mid_save(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f"last.ckpt.tmp-{dead}", tmp_path / f"best-epoch=3.ckpt.tmp-{dead}"]
    kept = [tmp_path / f"last.ckpt.tmp-{alive}", tmp_path / f"notes.txt.tmp-{dead}", tmp_path / "last.ckpt.tmp-x"]
    for path in stale + kept:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 1}, tmp_path / "epoch=0.ckpt")
    assert sorted(tmp_path.iterdir()) == sorted([*kept, tmp_path / "epoch=0.ckpt"])
    assert remove_stale_temporaries(tmp_path, "*.txt") == [tmp_path / f"notes.txt.tmp-{dead}"]


# Unwritable places


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(WriteError) as raised:
        make_dir(tmp_path / "runs" / "mlp" / "version_0")
    assert str(raised.value) == (
        f"cannot create the folder {tmp_path / 'runs' / 'mlp' / 'version_0'}: {tmp_path / 'runs'} is a file, not a "
        "folder"
    )
    with pytest.raises(WriteError, match="runs: a file of that name is in the way$"):
        make_dir(tmp_path / "runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: chmod cannot refuse it a write")
def test_a_read_only_folder_is_named_with_the_systems_reason(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir(mode=0o555)
    with pytest.raises(WriteError) as raised:
        files.write_atomically(tmp_path / "runs" / "model.pth", lambda file: file.write(b"weights"))
    assert str(raised.value) == f"cannot write {tmp_path / 'runs' / 'model.pth'}: {os.strerror(errno.EACCES)}"


# Export


@pytest.fixture(scope="module")
def line_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the straight line, fitted one epoch."""
    folder = tmp_path_factory.mktemp("line")
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=folder,
    )  # fmt: skip
    trainer.fit(MInterface(), DInterface())
    trainer.save_checkpoint(folder / "line.ckpt")
    return folder / "line.ckpt"


def test_export_into_a_file_is_one_line_naming_it(line_checkpoint: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "exported").write_text("a file")
    assert export.main(["--ckpt_path", str(line_checkpoint), "--out_dir", str(tmp_path / "exported")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot create the folder {tmp_path / 'exported'}: a file of that name is in the way\n"
    )
    assert (tmp_path / "exported").read_text() == "a file"


@pytest.mark.parametrize("name", ["state_dict", "torchscript"])
def test_export_on_a_full_disk_names_the_file_and_keeps_the_previous_one(
    line_checkpoint: Path, tmp_path: Path, disk: Disk, name: str
) -> None:
    path = export.export(line_checkpoint, tmp_path, [name])[name]
    before = path.read_bytes()
    disk.room = 100
    with pytest.raises(WriteError) as raised:
        export.export(line_checkpoint, tmp_path, [name])
    assert str(raised.value) == f"cannot write {path}: {NO_SPACE}"
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_onnx_export_on_a_full_disk_names_the_file(
    line_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(export, "onnx_missing", list)  # the exporter itself is replaced
    monkeypatch.setattr(torch.onnx, "export", full_disk)
    with pytest.raises(WriteError) as raised:
        export.export(line_checkpoint, tmp_path, ["onnx"])
    assert str(raised.value) == f"cannot write {tmp_path / 'model.onnx'}: {NO_SPACE}"


# --ckpt_path last and best: the newest checkpoint that loads


class Payload:
    """Unpickling this object creates `marker`: code in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def write_checkpoint(path: Path, step: int, age: int, best: Path | None = None) -> Path:
    """A small checkpoint of step `step`, `age` seconds old, whose checkpoint callback names `best` as the best."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"best_model_path": str(best) if best else "", "last_model_path": ""}
    callbacks = {"ModelCheckpoint{}": state}
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": step, "callbacks": callbacks}, path)
    os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """runs/mlp holding version_0 and version_9 (older runs), version_10 (the latest: last.ckpt of step 20, and two
    best checkpoints, best-epoch=1.ckpt the newer), its copy version_10_backup, and version_11 with no checkpoint."""
    runs = tmp_path / "runs" / "mlp"
    write_checkpoint(runs / "version_0" / "checkpoints" / "last.ckpt", 5, age=500)
    write_checkpoint(runs / "version_9" / "checkpoints" / "last.ckpt", 9, age=400)
    checkpoints = runs / "version_10" / "checkpoints"
    best = checkpoints / "best-epoch=1.ckpt"
    write_checkpoint(checkpoints / "best-epoch=0.ckpt", 5, age=60, best=checkpoints / "best-epoch=0.ckpt")
    write_checkpoint(best, 10, age=30, best=best)
    write_checkpoint(checkpoints / "last.ckpt", 20, age=20, best=best)
    shutil.copytree(runs / "version_10", runs / "version_10_backup")
    (runs / "version_11").mkdir()  # as a `test` command leaves
    return runs


def test_last_and_best_are_the_latest_runs_ignoring_folders_that_are_no_versions(runs: Path, capsys) -> None:
    checkpoints = runs / "version_10" / "checkpoints"
    assert latest_checkpoint(runs, "last") == checkpoints / "last.ckpt"
    assert latest_checkpoint(runs, "best") == checkpoints / "best-epoch=1.ckpt"
    assert capsys.readouterr().err == ""
    assert latest_checkpoint(runs.parent / "none", "last") is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "not a readable checkpoint (File is not a zip file)"),
        ("empty", "not a readable checkpoint (File is not a zip file)"),
        ("code", "refused, it does not load with weights-only unpickling: it calls ?, builtins.getattr"),
    ],
)
def test_a_damaged_or_hostile_last_ckpt_is_skipped_for_the_newest_checkpoint_that_loads(
    runs: Path, capsys: pytest.CaptureFixture, damage: str, reason: str
) -> None:
    checkpoints = runs / "version_10" / "checkpoints"
    last, marker = checkpoints / "last.ckpt", runs / "marker"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:300])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        torch.save({"state_dict": {}, "hyper_parameters": {"net": Payload(marker)}}, last)
    assert latest_checkpoint(runs, "last") == checkpoints / "best-epoch=1.ckpt"  # the newest left
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"Skipped {last}: {reason}")
    assert latest_checkpoint(runs, "best") == checkpoints / "best-epoch=1.ckpt"  # as recorded there
    assert latest_checkpoint(runs, "last", set_aside=True) == checkpoints / "best-epoch=1.ckpt"
    assert capsys.readouterr().err.splitlines()[-1].endswith("; renamed to last.ckpt.refused")
    assert not last.exists() and (checkpoints / "last.ckpt.refused").is_file()
    assert not marker.exists()


def test_no_checkpoint_of_the_latest_run_loading_is_one_error_and_renames_nothing(runs: Path, capsys) -> None:
    checkpoints = runs / "version_10" / "checkpoints"
    for path in checkpoints.iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(ConfigError) as raised:
        latest_checkpoint(runs, "last", set_aside=True)
    assert str(raised.value) == (
        f"--ckpt_path last: no checkpoint of the latest run, {runs / 'version_10'}, loads (each is skipped above with "
        "the reason); give one with --ckpt_path PATH, or leave --ckpt_path out to start a new run"
    )
    assert len(capsys.readouterr().err.splitlines()) == 3
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch=0.ckpt", "best-epoch=1.ckpt", "last.ckpt"]


# End to end: main.py in a subprocess


TRAIN = (
    "--model", "mlp", "--trainer.max_epochs=1", "--data.dataset_args.num_samples=200",
    "--trainer.enable_progress_bar=false", "--test_after_fit=false",
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding runs/mlp/version_0 of one epoch of the MLP: best-epoch=0.ckpt and last.ckpt."""
    folder = tmp_path_factory.mktemp("trained")
    run = run_main(*TRAIN, cwd=folder)
    assert run.returncode == 0, run.stderr[-3000:]
    return folder


def copy_of(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "runs", tmp_path / "runs")
    return tmp_path


def run_with_file_size_limit(limit: int, *args: str, cwd: Path) -> Run:
    """main.py with `args`, where writing a file past `limit` bytes fails with EFBIG, as on a nearly full disk."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails rather than kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    return Run(proc, cwd)


def error_lines(run: Run) -> list[str]:
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_disk_full_while_training_is_one_line_and_keeps_the_last_checkpoint(trained: Path, tmp_path: Path) -> None:
    cwd = copy_of(trained, tmp_path)
    checkpoints = Path("runs/mlp/version_0/checkpoints")
    before = (cwd / checkpoints / "last.ckpt").read_bytes()
    # Checkpoints of this MLP are about 110 KB; config.yaml, hparams.yaml and the event files fit.
    run = run_with_file_size_limit(64 * 1024, *TRAIN, "--trainer.max_epochs=2", "--ckpt_path", "last", cwd=cwd)
    assert run.returncode == 2
    [line] = error_lines(run)
    assert line.startswith(f"error: cannot write {checkpoints}/") and line.endswith(f".ckpt: {TOO_LARGE}")
    assert (
        f"saving last.ckpt failed as well (cannot write {checkpoints / 'last.ckpt'}: {TOO_LARGE}); --ckpt_path last "
        "resumes from the newest checkpoint saved before"
    ) in run.stdout
    assert (cwd / checkpoints / "last.ckpt").read_bytes() == before
    assert sorted(p.name for p in (cwd / checkpoints).iterdir()) == ["best-epoch=0.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_resuming_skips_a_damaged_last_ckpt_and_ignores_backup_folders(trained: Path, tmp_path: Path) -> None:
    cwd = copy_of(trained, tmp_path)
    runs = cwd / "runs" / "mlp"
    shutil.copytree(runs / "version_0", runs / "version_2_backup")
    checkpoints = runs / "version_0" / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # the crash came mid-write, on a filesystem without atomic renames
    stale = checkpoints / f"last.ckpt.tmp-{dead_pid()}"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    run = run_main(*TRAIN, "--trainer.max_epochs=2", "--ckpt_path", "last", cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    shown = Path("runs/mlp/version_0/checkpoints")
    assert (
        f"Skipped {shown / 'last.ckpt'}: not a readable checkpoint (File is not a zip file); renamed to "
        "last.ckpt.refused"
    ) in run.stderr.splitlines()
    assert f"Resuming version_0 from {shown / 'best-epoch=0.ckpt'}" in run.stdout.splitlines()
    assert run.run_dir == runs / "version_0" and not (runs / "version_1").exists()
    steps_per_epoch = load(runs / "version_2_backup" / "checkpoints" / "last.ckpt")["global_step"]
    assert load(last)["global_step"] == 2 * steps_per_epoch  # a new last.ckpt, after the second epoch
    assert not stale.exists() and not (checkpoints / "last-v1.ckpt").exists()
    assert (checkpoints / "last.ckpt.refused").stat().st_size == 5000


@pytest.mark.slow
@pytest.mark.parametrize("place", ["a file", "read-only"])
def test_an_unwritable_runs_folder_is_one_line_naming_it(tmp_path: Path, place: str) -> None:
    run_folder = Path("runs", "mlp", "version_0")  # the run directory, created before anything is written into it
    if place == "a file":
        (tmp_path / "runs").write_text("not a folder")
        expected = f"error: cannot create the folder {run_folder}: runs is a file, not a folder"
    elif os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: chmod cannot refuse it a write")
    else:
        (tmp_path / "runs").mkdir(mode=0o555)
        expected = f"error: cannot create the folder {run_folder}: {os.strerror(errno.EACCES)}"
    run = run_main(*TRAIN, cwd=tmp_path)
    assert run.returncode == 2
    assert error_lines(run) == [expected]


@pytest.mark.slow
def test_exporting_torchscript_onto_a_full_disk_is_one_line_not_an_abort(trained: Path, tmp_path: Path) -> None:
    checkpoint = trained / "runs" / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    args = ("export", "--ckpt_path", str(checkpoint), "--out_dir", "out", "--formats", "torchscript")
    run = run_with_file_size_limit(16 * 1024, *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert error_lines(run) == [f"error: cannot write {Path('out') / 'model.torchscript.pt'}: {TOO_LARGE}"]
    assert not list((tmp_path / "out").iterdir())


# A net that fails as the environment variable BREAK says: `error` in every forward, `interrupt` (a Ctrl+C) in the
# sanity check's, `later` in the third training step's. Unset, it is a plain linear layer.
FAILING_NET = '''"""A linear layer that fails on demand."""

import os

import torch
from torch import nn


class Failing(nn.Module):
    def __init__(self, in_features: int = 1, out_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        failure = os.environ.get("BREAK")
        self.steps += self.training
        if failure == "error" or (failure == "later" and self.steps == 3):
            raise RuntimeError("the net broke")
        if failure == "interrupt" and not self.training:
            raise KeyboardInterrupt
        return self.linear(x)
'''
FAILING = ("--model", "failing", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false")


@pytest.fixture
def failing_net(project_copy: Path) -> Path:
    (project_copy / "model" / "failing.py").write_text(FAILING_NET)
    return project_copy


@pytest.mark.slow
def test_a_run_that_fails_before_training_leaves_no_run_directory_and_no_used_version(
    failing_net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs" / "failing"
    for failure, option, status, said in (
        ("error", (), 2, "error: model 'failing' cannot take the data's inputs of shape [1]: the net broke"),
        ("interrupt", (), 1, "Detected KeyboardInterrupt"),
        ("", ("--data.dataset_args.step=-1",), 2, "error: dataset 'line' refused --data.dataset_args.step -1"),
    ):
        monkeypatch.setenv("BREAK", failure)
        run = run_main(*FAILING, *option, cwd=tmp_path, root=failing_net)
        assert run.returncode == status and said in run.stdout + run.stderr, run.stderr[-3000:]
        assert not list(runs.glob("version_*")), failure
    monkeypatch.delenv("BREAK")
    run = run_main(*FAILING, cwd=tmp_path, root=failing_net)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.run_dir == runs / "version_0"  # no number used up by the failed runs


@pytest.mark.slow
def test_a_failed_run_keeps_what_training_or_anyone_else_wrote(
    failing_net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs" / "failing"
    monkeypatch.setenv("BREAK", "later")  # after two training steps: its logged losses are worth keeping
    run = run_main(*FAILING, "--data.batch_size=8", cwd=tmp_path, root=failing_net)
    assert run.returncode == 1 and "the net broke" in run.stderr
    assert (runs / "version_0" / "config.yaml").is_file() and "Removed" not in run.stderr
    # A folder that was there before the run, with a user's notes in it: the run fails, and it stays as it was.
    notes = runs / "version_1" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    monkeypatch.setenv("BREAK", "error")
    run = run_main(*FAILING, "--trainer.logger.init_args.version=1", cwd=tmp_path, root=failing_net)
    assert run.returncode == 2 and "the net broke" in run.stderr
    assert notes.read_text() == "mine" and (runs / "version_1" / "config.yaml").is_file()
    # A run resumed into its directory that fails before its first step keeps it, checkpoints and all.
    monkeypatch.delenv("BREAK")
    trained = run_main(*FAILING, cwd=tmp_path, root=failing_net)
    assert trained.returncode == 0 and trained.run_dir == runs / "version_2", trained.stderr[-3000:]
    before = {path.name for path in (runs / "version_2").rglob("*")}
    assert "last.ckpt" in before
    monkeypatch.setenv("BREAK", "error")
    resumed = run_main(*FAILING[:2], "--trainer.max_epochs=2", "--ckpt_path", "last", cwd=tmp_path, root=failing_net)
    assert resumed.returncode == 2 and "the net broke" in resumed.stderr and "Resuming version_2" in resumed.stdout
    assert set(before) <= {path.name for path in (runs / "version_2").rglob("*")}  # a new event file besides
