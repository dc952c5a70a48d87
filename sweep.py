"""Hyperparameter search on Optuna, each trial an ordinary run of this template:

    python main.py sweep --model mlp --sweep configs/sweeps/mlp.yaml --sweep.n_trials 20 --trainer.max_epochs 5

`--sweep` is the search space (see sweep_space.py); every option that is not `--sweep.*` goes to each trial's
`python main.py fit`. Each trial runs in a process of its own (a crash, a NaN loss or running out of memory fails
that trial alone, with the reason) in runs/sweeps/<name>/trial_<number>, a normal run directory; its objective is
the metric at its best checkpoint, and TrialPruning stops a hopeless one early. The study lives in a storage:
runs/sweeps/<name>/study.journal by default (safe for several worker processes on one machine), or a database given
with `--sweep.storage` for workers on several machines. Running the same command again goes on with the study;
workers on one storage share its n_trials. When a worker ends it writes trials.csv, best.yaml and the plots
(sweep_report.py).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from callbacks.results import RESULTS_FILE
from child_runs import Stopped, wait_for
from files import make_dir, write_atomically
from runs import RUNS_DIR
from sweep_report import report
from sweep_space import Dimension, TrialConfigs, as_config, read_space
from sweep_study import (
    COUNTS,
    HEARTBEAT_S,
    OPTIONS,
    PRUNED_AT,
    REASON,
    RUN_DIR,
    TRIAL_VARIABLE,
    WORKER,
    counts,
    fail_orphaned,
    heartbeat,
    make_pruner,
    open_storage,
    open_study,
    worker,
)
from utils import ConfigError

MAIN = Path(__file__).resolve().parent / "main.py"
PRUNING_CALLBACK = "callbacks.trial_pruning.TrialPruning"
TRIAL_FILE, OUTPUT_FILE, STORAGE_FILE = "trial.yaml", "output.log", "study.journal"
# Exit statuses of a sweep stopped by Ctrl+C or SIGTERM, as a shell reports a process that the signal killed.
STOPPED_STATUS = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # Linux's prctl option: a signal the process gets when the process that started it ends


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one `error:` line, as main.py's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"sweep: {message} (python main.py sweep --help lists the options)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py sweep",
        allow_abbrev=False,
        description="Hyperparameter search on Optuna: each trial is a run of `python main.py fit`, in a process of "
        "its own, in runs/sweeps/NAME/trial_N; the same command again goes on with the study.",
        epilog="Every other option goes to each trial's `python main.py fit`. The search space maps options to "
        "distributions, e.g. `model.lr: {float: [1.0e-4, 1.0e-1], log: true}` (see configs/sweeps/).",
    )
    parser.add_argument("--sweep", dest="space", required=True, help="the search space, a YAML file")
    parser.add_argument("--sweep.n_trials", dest="n_trials", type=int, default=20, help="trials in all, every worker's")
    parser.add_argument("--sweep.metric", dest="metric", default="val/loss", help="the objective, a val/ metric")
    parser.add_argument(
        "--sweep.direction",
        dest="direction",
        choices=("minimize", "maximize"),
        default="minimize",
        help="of the metric",
    )
    parser.add_argument(
        "--sweep.pruner",
        dest="pruner",
        default="median",
        help="median, percentile, successive_halving, hyperband, threshold or none (Optuna's pruners)",
    )
    parser.add_argument(
        "--sweep.pruner_args",
        dest="pruner_args",
        type=_json_object,
        default={},
        metavar="JSON",
        help="the pruner's keyword arguments, e.g. '{\"n_startup_trials\": 3}'",
    )
    parser.add_argument(
        "--sweep.storage",
        dest="storage",
        help=f"a database URL, or a journal file (default runs/sweeps/NAME/"
        f"{STORAGE_FILE}); put a database password in PGPASSWORD or ~/.pgpass, not here",
    )
    parser.add_argument("--sweep.name", dest="name", help="the study and its folder (default: the --sweep file's name)")
    parser.add_argument("--sweep.seed", dest="seed", type=int, default=0, help="the sampler's seed")
    return parser


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('give a JSON object, e.g. {"n_startup_trials": 3}')
    return value


def main(argv: Sequence[str]) -> int:
    """`sweep` (argv[0]) with its options; a user error prints one line and returns 2."""
    args = list(argv[1:])
    try:
        options, fit_args = _parser().parse_known_args(args)
        return run_sweep(options, fit_args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_sweep(options: argparse.Namespace, fit_args: list[str]) -> int:
    """Check everything, open the study, run trials until it holds n_trials, then write what it leaves."""
    unknown = [arg for arg in fit_args if arg.startswith("--sweep")]
    if unknown:
        raise ConfigError(f"unknown sweep option {unknown[0]} (python main.py sweep --help lists them)")
    for arg in fit_args:
        key = arg.partition("=")[0]
        if key == "--ckpt_path":
            raise ConfigError("--ckpt_path: each trial of a sweep trains from the start; remove it")
        if key == "--trainer.logger":
            raise ConfigError("--trainer.logger: a sweep keeps each trial in its folder with TensorBoard; remove it")
    if options.n_trials < 1:
        raise ConfigError(f"--sweep.n_trials must be >= 1, got {options.n_trials}")
    name = options.name or Path(options.space).stem
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise ConfigError(f"--sweep.name {name!r}: give a plain folder name (letters, digits, . _ -)")
    space = read_space(options.space)
    shared = [*fit_args]
    if not any(arg.partition("=")[0] == "--checkpoint.monitor" for arg in fit_args):
        # The best checkpoint, whose metric is the objective, is the best by that metric.
        mode = "min" if options.direction == "minimize" else "max"
        shared += ["--checkpoint.monitor", options.metric, "--checkpoint.mode", mode]
    configs = TrialConfigs(shared)
    configs.check(space, options.space)
    make_pruner(options.pruner, options.pruner_args)  # its name and arguments checked before any trial
    folder = Path(RUNS_DIR) / "sweeps" / name
    storage = options.storage or str(folder / STORAGE_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    identity = json.loads(json.dumps({"space": [vars(d) for d in space], "metric": options.metric, "fit": fit_args}))
    study = open_study(store := open_storage(storage), name, options.direction, identity)
    if orphaned := fail_orphaned(study):
        print(f"Trials {', '.join(map(str, orphaned))} were left running by a worker that ended: marked failed")
    pruning = "no pruning" if options.pruner == "none" else f"{options.pruner} pruner"
    print(
        f"Sweep {name!r}: {options.n_trials} trials in all, each `python main.py fit {shlex.join(fit_args)}` with "
        f"the options of {options.space}; {options.direction} {options.metric}, {pruning}. Trials in "
        f"{folder}; study in {_hidden_password(storage)}",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while (trial := _next_trial(study, space, options)) is not None:
            _run_trial(study, trial, folder, shared, options, storage, heartbeat(store, study, trial.number))
    except (Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(
            f"error: sweep stopped by {signal.Signals(signum).name}; a trial it was running is marked failed and does "
            "not count: the same command goes on with the study",
            file=sys.stderr,
        )
        return STOPPED_STATUS[signum]
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n".join(report(study, folder, configs, options.metric)))
    return 0


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _hidden_password(storage: str) -> str:
    if "://" not in storage:
        return storage
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def _next_trial(study: optuna.Study, space: list[Dimension], options: argparse.Namespace) -> optuna.Trial | None:
    """A new trial with its sampled options, or None once the study holds n_trials that count (`counts`): trial k
    runs only if fewer than n_trials that count have smaller numbers, so that workers asking at once never run more
    than n_trials in all."""
    if sum(counts(trial) for trial in study.get_trials(deepcopy=False)) >= options.n_trials:
        return None
    with warnings.catch_warnings():  # Optuna's heartbeat works outside study.optimize too: this loop sends it
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        trial = study.ask()
    trial.set_user_attr(WORKER, worker())
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t)]
    if len(ahead) >= options.n_trials:
        trial.set_user_attr(REASON, "not run: other workers had started the sweep's n_trials already")
        study.tell(trial, state=TrialState.FAIL)
        return None
    # Seeded by the trial's number: workers sample different values, and a sweep run again the same ones.
    study.sampler = optuna.samplers.TPESampler(seed=options.seed + trial.number, constant_liar=True)
    values = {dimension.option: dimension.suggest(trial) for dimension in space}
    trial.set_user_attr(OPTIONS, values)
    print(
        f"trial {trial.number} ({len(ahead) + 1} of {options.n_trials}): "
        + ", ".join(f"{option}={json.dumps(value)}" for option, value in values.items()),
        flush=True,
    )
    return trial


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    folder: Path,
    shared: list[str],
    options: argparse.Namespace,
    storage: str,
    beat: Callable[[], None] | None,
) -> None:
    """Run `trial` as `python main.py fit` in a process of its own, in folder/trial_<number>, and tell the study how
    it ended. Raises Stopped, the trial marked failed (not counting), when the sweep is stopped."""
    number = trial.number
    run = folder / f"trial_{number}"
    if (run / "config.yaml").exists():
        trial.set_user_attr(REASON, f"{run} holds a run already")
        study.tell(trial, state=TrialState.FAIL)
        raise ConfigError(
            f"{run} holds a run of another study: move the folder away, or give this sweep a --sweep.name of its own"
        )
    values = trial.user_attrs[OPTIONS]
    make_dir(run)
    trial.set_user_attr(RUN_DIR, str(run))
    text = f"# The options that trial {number} of sweep {study.study_name!r} tries.\n" + yaml.safe_dump(
        as_config(values), sort_keys=False
    )
    write_atomically(run / TRIAL_FILE, lambda file: file.write(text.encode()))
    logger = "--trainer.logger.init_args."
    pruning = {"class_path": PRUNING_CALLBACK, "init_args": {"monitor": options.metric}}
    command = [
        "fit", *shared, "--config", str(run / TRIAL_FILE),
        f"{logger}save_dir", str(folder.parent), f"{logger}name", folder.name, f"{logger}version", run.name,
        f"--trainer.callbacks+={json.dumps(pruning)}",
    ]  # fmt: skip
    where = {
        "storage": storage, "study": study.study_name, "trial": number, "pruner": options.pruner,
        "pruner_args": options.pruner_args,
    }  # fmt: skip
    started = time.monotonic()
    with (run / OUTPUT_FILE).open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, str(MAIN), *command],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, TRIAL_VARIABLE: json.dumps(where), "PYTHONUNBUFFERED": "1"},
            preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            status = wait_for(process, beat, HEARTBEAT_S)
        except Stopped as stop:
            trial.set_user_attr(REASON, f"stopped by {stop}")
            study.tell(trial, state=TrialState.FAIL)
            raise
    seconds = time.monotonic() - started
    held = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    value = _objective(run, options.metric)
    if status in (-signal.SIGTERM, STOPPED_STATUS[signal.SIGTERM]):  # the trial alone got a SIGTERM: a stop too
        trial.set_user_attr(REASON, "stopped by SIGTERM")
        study.tell(trial, state=TrialState.FAIL)
        raise Stopped(signal.SIGTERM)
    if status != 0:
        reason = _failure(run / OUTPUT_FILE, status)
    elif value is None:
        reason = f"{options.metric} is not among the metrics of its validation (in {run / RESULTS_FILE})"
    elif not math.isfinite(value):
        reason = f"{options.metric} is {value} at its best checkpoint"
    elif PRUNED_AT in held.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        print(f"trial {number}: pruned after epoch {held.user_attrs[PRUNED_AT]} ({seconds:.0f} s)", flush=True)
        return
    else:
        study.tell(trial, value)
        print(f"trial {number}: {options.metric} {value:.6g} ({seconds:.0f} s)", flush=True)
        return
    trial.set_user_attr(REASON, reason)
    trial.set_user_attr(COUNTS, True)
    study.tell(trial, state=TrialState.FAIL)
    print(f"trial {number}: failed: {reason} (its output: {run / OUTPUT_FILE})", flush=True)
    if status == 0 and value is None:  # every trial would fail so
        raise ConfigError(
            f"--sweep.metric {options.metric}: trial {number} logged no such metric at validation; give one of "
            f"those in {run / RESULTS_FILE} (its 'validation' part)"
        )


def _objective(run: Path, metric: str) -> float | None:
    """The trial's `metric` at its best checkpoint (validated again once fit ends: results.json's `validation`)."""
    try:
        results = json.loads((run / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    value = results.get("validation", {}).get(metric)
    try:
        return None if value is None else float(value)  # nan and inf are written as strings
    except (TypeError, ValueError):
        return None


def _failure(output: Path, status: int) -> str:
    """Why a trial's process failed: its `error:` line, else the last line of its output (a traceback's)."""
    try:
        with output.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 65536))
            lines = [line.strip() for line in file.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][:500]
    if status < 0:
        return f"killed by {signal.Signals(-status).name}" + (" (out of memory?)" if -status == signal.SIGKILL else "")
    return f"exit status {status}: {lines[-1][:500] if lines else 'no output'}"


def _end_with_parent() -> None:
    """In a trial's process before it starts: a SIGTERM when the sweep ends, killed too, so no trial runs on alone."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
