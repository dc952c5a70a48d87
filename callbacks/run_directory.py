"""One process per run directory, and the SLURM job that wrote a run, so that the job, requeued, finds it again."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback

from files import make_dir, run_dir, write_atomically
from utils import ConfigError

SLURM_JOB_FILE = "slurm_job"  # in a run directory: the SLURM job that trains it
# What the template and its loggers write into a run directory before the first training step.
BEFORE_TRAINING = ("config.yaml", "hparams.yaml", ".lock", SLURM_JOB_FILE, "events.out.tfevents.*", "metrics.csv")


def lock_run(run: Path) -> IO[str]:
    """Hold the lock of the run directory `run` (created; the lock is its file `.lock`) for as long as this process
    lives, or raise a ConfigError when another process holds it. The system drops the lock when the process ends,
    crashed too, so nothing stays stuck. Returns the open lock file, which must be kept."""
    make_dir(run)
    lock = (run / ".lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(
            f"{run} is in use by {holder}, which trains into it; wait for that to end (or stop it) before resuming "
            "this run"
        ) from None
    lock.truncate(0)
    lock.write(f"process {os.getpid()}")
    lock.flush()
    return lock


def slurm_job() -> str | None:
    """This SLURM job's id (with the task of a job array), or None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")


def requeued() -> bool:
    """Whether SLURM requeued this job (after a pre-emption, or the time limit with `--signal`)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def run_of_job(runs: Path, job: str) -> Path | None:
    """The latest run directory under `runs` that SLURM job `job` trained, if any."""
    mine = [
        folder
        for folder in runs.glob("version_*")
        if folder.name.removeprefix("version_").isdecimal()
        and (folder / SLURM_JOB_FILE).is_file()
        and (folder / SLURM_JOB_FILE).read_text().strip() == job
    ]
    return max(mine, key=lambda folder: int(folder.name.removeprefix("version_")), default=None)


class RunDirectory(SaveConfigCallback):
    """LightningCLI's SaveConfigCallback, which first takes the run directory's lock (`lock_run`: a second process
    resuming a run in use is refused before it writes anything there) and, under SLURM, records the job that
    trains the run, for the job requeued to find (`run_of_job`).

    A run that fails before its first training step (bad data, an error in setup or in the sanity check, Ctrl+C)
    leaves no run directory behind, so that its version number is free again: the directory is removed when this
    run created it (`expect`) and it holds nothing but what the template wrote there (`BEFORE_TRAINING`).
    """

    place: Path | None = None  # the run directory, when no folder was there before this run (see `expect`)
    trained = False  # whether a training step ended

    def expect(self, trainer: pl.Trainer) -> None:
        """Note the run directory of the first logger (TensorBoard's or CSV's version folder), if it is not there yet.
        Called before the trainer runs: it creates the folder as the run begins."""
        log_dir = getattr(trainer.logger, "log_dir", None)
        self.place = Path(log_dir) if trainer.is_global_zero and log_dir and not Path(log_dir).exists() else None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self.trained = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.place is None or self.trained or not trainer.is_global_zero or not self.place.is_dir():
            return
        for logger in trainer.loggers:
            logger.finalize("failed")  # the event file closed now, not written to after it is removed
        if remove_unstarted(self.place):
            if (lock := getattr(self, "lock", None)) is not None:
                lock.close()
            print(f"Removed {self.place}: the run failed before it trained or wrote results", file=sys.stderr)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and not trainer.fast_dev_run:
            log_dir = trainer.log_dir  # on every process: it broadcasts
            config = Path(log_dir or ".") / self.config_filename
            if trainer.strategy.broadcast(bool(log_dir) and not self.overwrite and config.exists()):
                raise ConfigError(
                    f"{config} exists: {log_dir} holds a run already, which this one would overwrite; move it away "
                    "or keep a logger (the default TensorBoard one), which gives each run a folder of its own"
                )
            if trainer.is_global_zero and log_dir:
                self.lock = lock_run(Path(log_dir))
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called on global rank 0 alone, after config.yaml is written.
        job, directory = slurm_job(), run_dir(trainer)
        if job and stage == "fit" and directory is not None:
            write_atomically(directory / SLURM_JOB_FILE, lambda file: file.write(f"{job}\n".encode()))


def remove_unstarted(run: Path) -> bool:
    """Remove the folder `run` if it holds nothing but files of `BEFORE_TRAINING` and empty folders (checkpoints/);
    return whether it did. Anything else in it (a checkpoint, a user's file) keeps it whole."""
    paths = sorted(run.rglob("*"), key=lambda path: len(path.parts), reverse=True)  # the deepest first
    files = [path for path in paths if not path.is_dir() or path.is_symlink()]
    if any(not any(path.match(pattern) for pattern in BEFORE_TRAINING) for path in files):
        return False
    try:
        for path in files:
            path.unlink()
        for path in paths:
            if path not in files:
                path.rmdir()
        run.rmdir()
    except OSError:  # something written there meanwhile, or no right to remove: the run's own error matters more
        return False
    return True
