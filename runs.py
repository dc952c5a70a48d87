"""The run directories, runs/<model>/version_N, and the checkpoints that `--ckpt_path last|best` and a requeued SLURM
job resume from."""

from __future__ import annotations

import sys
from pathlib import Path

from callbacks.run_directory import requeued, run_of_job, slurm_job
from trust import check_checkpoint_file, load_checkpoint
from utils import ConfigError

RUNS_DIR = "runs"  # where runs go: runs/<model>/version_N


def resolve_ckpt_path(subcommand: str, ckpt_path: str | None, runs: Path | None, *, rank: int) -> str | None:
    """The checkpoint file that `--ckpt_path` means, checked (`trust.check_checkpoint_file`) before anything reads
    its hyperparameters.

    `last` and `best` mean those of the latest run under `runs` (runs/<model>, from the logger's save_dir and name;
    None for a logger that keeps no such folders). A `fit` without `--ckpt_path` in a SLURM job that was requeued
    goes on with the run that job trained; `fit --ckpt_path last` with no run yet starts one. Process `rank` 0
    alone renames damaged checkpoints (see `newest_loadable`).
    """
    if subcommand == "fit" and not ckpt_path and runs is not None and requeued():
        ckpt_path = _checkpoint_of_requeued_job(runs, rank=rank)
    elif ckpt_path in ("last", "best"):
        if runs is None:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} means the latest run under runs/<model>, which this logger does not keep: "
                "give the checkpoint's path"
            )
        found = latest_checkpoint(runs, ckpt_path, set_aside=subcommand == "fit" and rank == 0)
        if found is None and (subcommand, ckpt_path) == ("fit", "last"):
            print(f"No run under {runs} to resume: starting a new one")  # so that a re-queued job can always resume
        elif found is None:
            raise ConfigError(f"--ckpt_path {ckpt_path}: no run under {runs} has a checkpoint yet; train first")
        ckpt_path = str(found) if found else None
    elif ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"--ckpt_path {ckpt_path}: no such file (or use last or best, the latest run's)")
    if ckpt_path:
        check_checkpoint_file(ckpt_path)
    return ckpt_path


def run_of_checkpoint(ckpt_path: str, runs: Path | None) -> Path | None:
    """The run directory under `runs` that the checkpoint belongs to (runs/<model>/version_N/checkpoints/x.ckpt), if
    it is one: `fit` from it goes on in that run."""
    run = Path(ckpt_path).resolve().parents[1]
    return run if runs is not None and run.parent == runs.resolve() else None


def _checkpoint_of_requeued_job(runs: Path, *, rank: int) -> str | None:
    """The newest checkpoint of the run this requeued SLURM job trained before, or None (a new run) if it saved none."""
    job = slurm_job()
    run = run_of_job(runs, job)
    found = newest_loadable(run / "checkpoints", set_aside=rank == 0) if run else None
    if found is None:
        print(f"SLURM requeued job {job}, which had saved no checkpoint under {runs}: starting a new run")
        return None
    print(f"SLURM requeued job {job}: it goes on with its run {run}")
    return str(found)


def latest_checkpoint(runs: Path, kind: str, *, set_aside: bool = False) -> Path | None:
    """The `last` or `best` checkpoint of the latest run under `runs` (runs/<model>/version_N) that saved any; None
    if none did. `last` is the newest checkpoint of that run that loads (`newest_loadable`, `set_aside` as there),
    `best` the best one that it records. Folders not named version_N, such as a copy `version_2_backup`, are no
    runs."""
    saved = [
        folder
        for folder in runs.glob("version_*")
        if folder.name.removeprefix("version_").isdecimal() and _checkpoints(folder / "checkpoints")
    ]
    if not saved:
        return None
    run = max(saved, key=lambda folder: int(folder.name.removeprefix("version_")))
    found = newest_loadable(run / "checkpoints", set_aside=set_aside)
    if found is None:
        raise ConfigError(
            f"--ckpt_path {kind}: no checkpoint of the latest run, {run}, loads (each is skipped above with the "
            "reason); give one with --ckpt_path PATH, or leave --ckpt_path out to start a new run"
        )
    if kind == "last":
        return found
    states = load_checkpoint(found).get("callbacks", {})
    best = next((s.get("best_model_path") for k, s in states.items() if "Checkpoint{" in k), None)
    if not best or not Path(best).is_file():
        raise ConfigError(f"--ckpt_path best: the run in {run} recorded no best checkpoint; use last")
    return Path(best)


def newest_loadable(folder: Path, *, set_aside: bool = False) -> Path | None:
    """The newest checkpoint in `folder` that `check_checkpoint_file` accepts: last.ckpt, or a SLURM pre-emption's
    hpc_ckpt_N.ckpt when nothing was written after it. A crash can leave last.ckpt damaged, or someone may have put a
    hostile file there: each one refused is skipped with a line on stderr that says why. With `set_aside` (training
    resumes into `folder`), each is also renamed to `<name>.refused` once one loads, so that the run writes its
    last.ckpt again, not a last-v1.ckpt. A file that cannot be read at all (no permission, an I/O error, too
    little memory) is no damage to skip: that is an error."""
    candidates = _checkpoints(folder)
    candidates.sort(key=lambda path: (-path.lstat().st_mtime_ns, path.name != "last.ckpt"))
    found, skipped = None, {}
    for candidate in candidates:
        try:
            check_checkpoint_file(candidate)
        except ConfigError as error:
            if isinstance(error.__cause__, (OSError, MemoryError)):
                raise
            skipped[candidate] = str(error).removeprefix(f"--ckpt_path {candidate}: ")
            continue
        found = candidate
        break
    for path, reason in skipped.items():
        if set_aside and found:
            reason += f"; renamed to {_set_aside(path).name}"
        print(f"Skipped {path}: {reason}", file=sys.stderr)
    return found


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in `folder`, less hidden ones (a tuner's temporary checkpoints)."""
    return [path for path in folder.glob("*.ckpt") if not path.name.startswith(".")]


def _set_aside(path: Path) -> Path:
    """Rename `path` to `<name>.refused` (or `.refused-N`, never replacing a file) and return the new path."""
    target = path.with_name(f"{path.name}.refused")
    number = 0
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.refused-{number}")
    return path.rename(target)
