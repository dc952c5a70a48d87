"""Many runs as one experiment: k-fold cross-validation, repeated seeds, and the table of their results.

    python main.py cv --model mlp --data.num_folds 5        # runs/mlp/cv5/fold_0 ... fold_4, then the table
    python main.py repeat --model cnn --seeds 0 1 2         # runs/cnn/seeds/seed_0 ... seed_2, then the table
    python main.py aggregate runs/mlp/cv5                   # the table of any folder of runs

Each run is an ordinary `python main.py fit ...` in a process of its own, with every option given to `cv` or
`repeat` other than their own, so each is a normal run directory (config.yaml, checkpoints, results.json,
TensorBoard). The experiment folder's experiment.json records what was asked and which runs make it up: running the
same command again skips the runs that have results and resumes one that stopped from its last.ckpt. `aggregate`
writes results.md, results.csv and results.json into the experiment folder, and refuses to average over a run that
is missing or has no results.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callbacks.results import RESULTS_FILE
from child_runs import Stopped, wait_for
from command_line import read_command_line
from files import write_atomically
from results_table import EXPERIMENT_FILE, aggregate, finished, read_json
from runs import RUNS_DIR, newest_loadable
from utils import ConfigError

MAIN = Path(__file__).resolve().parent / "main.py"
# Exit statuses of a loop stopped by Ctrl+C or SIGTERM, as a shell reports a process that the signal killed.
STOPPED_STATUS = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


def main(argv: Sequence[str]) -> int:
    """`cv`, `repeat` or `aggregate` (argv[0]) with their options; a user error prints one line and returns 2."""
    command, args = argv[0], list(argv[1:])
    try:
        if command == "aggregate":
            options = _parser("aggregate").parse_args(args)
            print(aggregate(Path(options.folder), ensemble=options.ensemble))
            return 0
        options, fit_args = _parser(command).parse_known_args(args)
        return run_experiment(command, options, fit_args, args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one `error:` line, as main.py's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (python main.py {self.prog.split()[-1]} --help lists the options)")


def _parser(command: str) -> argparse.ArgumentParser:
    """The options of `cv`, `repeat` or `aggregate` themselves; `cv` and `repeat` pass every other one to `fit`."""
    parser = _Parser(prog=f"main.py {command}", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    if command == "aggregate":
        parser.add_argument("folder", help="the experiment folder, or any folder whose subfolders are runs")
    else:
        parser.epilog = "Every other option goes to each run's `python main.py fit`."
    if command == "cv":
        parser.add_argument("--data.num_folds", dest="num_folds", type=int, required=True, help="number of folds K")
    if command == "repeat":
        parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the training seeds, one run each")
    if command != "aggregate":
        parser.add_argument("--name", help="the experiment folder's name under runs/<model> (default cvK or seeds)")
    parser.add_argument(
        "--ensemble",
        type=_boolean,
        nargs="?",
        const=True,
        default=False,
        metavar="true|false",
        help="also test the mean of the runs' class probabilities on the test set (classification)",
    )
    return parser


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run_experiment(kind: str, options: argparse.Namespace, fit_args: list[str], args: list[str]) -> int:
    """Run each run of a `cv` or `repeat` experiment (`args`, the command's options: its own ones in `options`, the
    rest for `fit` in `fit_args`) that has no results yet, in turn, then print the table."""
    for option in ("--ckpt_path", "--data.fold" if kind == "cv" else "--seed_everything"):
        if any(arg == option or arg.startswith(f"{option}=") for arg in fit_args):
            raise ConfigError(f"{option}: {kind} sets it for each run; remove it")
    _check_logger(kind, fit_args)
    model = read_command_line(["fit", *fit_args]).model
    if kind == "cv":
        k = options.num_folds
        if k < 2:
            raise ConfigError(f"--data.num_folds must be >= 2, got {k}")
        runs = {f"fold_{i}": ["--data.num_folds", str(k), "--data.fold", str(i)] for i in range(k)}
        name = options.name or f"cv{k}"
    else:
        if len(set(options.seeds)) != len(options.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, options.seeds))}: a seed is given twice")
        runs = {f"seed_{s}": ["--seed_everything", str(s)] for s in options.seeds}
        name = options.name or "seeds"
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: give a plain folder name (letters, digits, . _ -)")
    folder = Path(RUNS_DIR) / model / name
    experiment = {
        "kind": kind,
        "command": shlex.join(["python", "main.py", kind, *args]),
        "fit_arguments": fit_args,
        "runs": runs,
    }
    _start(folder, experiment)
    logger = "--trainer.logger.init_args."
    for number, (run, extra) in enumerate(runs.items(), 1):
        directory = folder / run
        if finished(directory):
            print(f"{kind} {run} ({number}/{len(runs)}): has its results already ({directory / RESULTS_FILE}), skipped")
            continue
        # As `--ckpt_path last`: the newest checkpoint that loads (last.ckpt, or a SLURM pre-emption's).
        resume = newest_loadable(directory / "checkpoints", set_aside=True) if directory.exists() else None
        if resume is None and directory.exists():
            # Stopped before its first checkpoint: nothing to resume; the run starts again in a folder of its own.
            print(f"{kind} {run}: {directory} holds no checkpoint to resume, set aside as {_set_aside(directory)}")
        where = [f"{logger}save_dir", str(folder.parent), f"{logger}name", name, f"{logger}version", run]
        command = ["fit", *fit_args, *extra, *where, *(["--ckpt_path", str(resume)] if resume else [])]
        print(f"{kind} {run} ({number}/{len(runs)}): python main.py {shlex.join(command)}", flush=True)
        try:
            status = wait_for(subprocess.Popen([sys.executable, str(MAIN), *command]))
        except Stopped as stop:
            print(
                f"error: {kind} stopped by {stop} during {run} (in {directory}); the same command goes on from there",
                file=sys.stderr,
            )
            return STOPPED_STATUS[stop.signum]
        if status == STOPPED_STATUS[signal.SIGTERM]:  # the run alone got the SIGTERM (a scheduler's, say)
            print(f"error: {kind} {run} was stopped by SIGTERM; the same command goes on from there", file=sys.stderr)
            return status
        if status != 0:
            done = [r for r in runs if finished(folder / r)]
            print(
                f"error: {kind} {run} failed (exit status {status}; its output is above); the runs with results "
                f"({', '.join(done) or 'none'}) are kept: fix the cause and run the same command again",
                file=sys.stderr,
            )
            return 1
    print(aggregate(folder, ensemble=options.ensemble))
    return 0


def _check_logger(kind: str, fit_args: list[str]) -> None:
    """Refuse a logger other than TensorBoard's or CSV's, the two that keep a run in save_dir/name/version, where
    `cv` and `repeat` put each of theirs."""
    tokens = [part for arg in fit_args for part in arg.split("=", 1)]
    for option, value in zip(tokens, tokens[1:], strict=False):
        if option == "--trainer.logger" and value.rpartition(".")[2] not in ("TensorBoardLogger", "CSVLogger"):
            raise ConfigError(
                f"--trainer.logger {value}: {kind} keeps each run in a folder of its experiment, which only "
                "TensorBoardLogger and CSVLogger do; use one of them"
            )


def _start(folder: Path, experiment: dict[str, Any]) -> None:
    """Write experiment.json into `folder`, or check that the one there records the same experiment (one whose runs
    never began is replaced: a first attempt that failed on a mistyped option)."""
    path = folder / EXPERIMENT_FILE
    held = read_json(path) if path.is_file() else {}
    runs = held.get("runs")
    if isinstance(runs, dict) and any((folder / str(run)).exists() for run in runs):
        if (held.get("kind"), held.get("fit_arguments"), held.get("runs")) != (
            experiment["kind"],
            experiment["fit_arguments"],
            experiment["runs"],
        ):
            raise ConfigError(
                f"{folder} holds another experiment ({held.get('command') or held.get('fit_arguments')}); give a "
                "--name of its own to this one"
            )
        print(f"Going on with the experiment in {folder}")
        return
    write_atomically(path, lambda file: file.write((json.dumps(experiment, indent=2) + "\n").encode()))


def _set_aside(folder: Path) -> Path:
    """Rename `folder` to `<name>.stopped` (or `.stopped-N`, never replacing one) and return the new path."""
    target, number = folder.with_name(f"{folder.name}.stopped"), 0
    while target.exists():
        number += 1
        target = folder.with_name(f"{folder.name}.stopped-{number}")
    return folder.rename(target)
