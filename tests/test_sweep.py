"""Hyperparameter sweeps (sweep.py): trials as runs, best.yaml, resume after a kill, workers sharing a journal file or a
PostgreSQL server, failed and pruned trials, and search spaces that are wrong or hostile."""

from __future__ import annotations

import csv
import fcntl
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, run_main
from optuna.trial import TrialState
from postgres_server import postgres_server

import sweep
import sweep_study
from sweep_study import COUNTS, OPTIONS, REASON, RUN_DIR, WORKER, open_storage

# Trials of seconds: the embedded synthetic data, small.
TINY = [
    "--model", "mlp", "--trainer.max_epochs", "2", "--data.dataset_args.num_samples", "240",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
SPACE = """\
model.lr: {float: [1.0e-3, 1.0e-1], log: true}
model.net_args.hidden_sizes: {categorical: [[16], [32, 16]]}
"""


def write_space(folder: Path, text: str = SPACE, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def sweep_args(space: Path, *extra: str) -> list[str]:
    return ["sweep", "--sweep", str(space), *TINY, *extra]


def trials(cwd: Path, name: str = "tiny", storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    where = storage or str(cwd / "runs" / "sweeps" / name / "study.journal")
    return optuna.load_study(study_name=name, storage=open_storage(where)).get_trials()


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.fixture
def start() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python main.py *args` in the background from `cwd`, its output in cwd/sweep-<n>.log; what a failed test
    leaves running is stopped at its end."""
    started: list[subprocess.Popen] = []

    def start(cwd: Path, *args: str) -> subprocess.Popen:
        log = cwd / f"sweep-{len(started)}.log"
        with log.open("wb") as output:
            command = [sys.executable, str(ROOT / "main.py"), *args]
            started.append(subprocess.Popen(command, cwd=cwd, stdout=output, stderr=output))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=120)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the sweep ended (status {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
def test_sweep_leaves_runs_best_config_table_and_plots(tmp_path: Path) -> None:
    space = write_space(tmp_path)
    run = run_main(*sweep_args(space, "--sweep.n_trials", "3", "--sweep.pruner", "none"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "runs" / "sweeps" / "tiny"
    held = trials(tmp_path)
    assert [t.state for t in held] == [TrialState.COMPLETE] * 3
    assert len({t.params["model.lr"] for t in held}) == 3
    for trial in held:
        directory = tmp_path / trial.user_attrs[RUN_DIR]
        assert directory == folder / f"trial_{trial.number}"
        assert (directory / "checkpoints" / "last.ckpt").is_file() and list(directory.glob("events.out.tfevents.*"))
        # The objective is the metric at the best checkpoint, and the run trained with the sampled options.
        assert trial.value == results(directory)["validation"]["val/loss"]
        config = (directory / "config.yaml").read_text()
        assert f"lr: {trial.user_attrs[OPTIONS]['model.lr']}" in config
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [(row["state"], float(row["value"])) for row in rows] == [("complete", t.value) for t in held]
    assert rows[0]["model.net_args.hidden_sizes"] == json.dumps(
        held[0].user_attrs[OPTIONS]["model.net_args.hidden_sizes"]
    )
    for plot in ("history.png", "importances.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = min(held, key=lambda t: t.value)
    assert f"Best trial: {best.number}, val/loss" in run.stdout
    # best.yaml trains the best trial again, as a new run of its own, to the same metric (the seed is in it).
    again = run_main("fit", "--config", str(folder / "best.yaml"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.run_dir == tmp_path / "runs" / "mlp" / "version_0"
    assert again.results["validation"]["val/loss"] == pytest.approx(best.value, rel=1e-6)


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_study(tmp_path: Path, start) -> None:
    space = write_space(tmp_path)
    args = sweep_args(space, "--sweep.n_trials", "3", "--trainer.max_epochs", "1")
    folder = tmp_path / "runs" / "sweeps" / "tiny"
    first = start(tmp_path, *args)
    wait_for(folder / "trial_1" / "config.yaml", first)  # trial 1 is training
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM
    assert "error: sweep stopped by SIGTERM" in (tmp_path / "sweep-0.log").read_text()
    done = results(folder / "trial_0")
    second = start(tmp_path, *args)
    wait_for(folder / "trial_2" / "config.yaml", second)
    second.kill()  # no chance to tell the study: trial 2 stays RUNNING
    second.wait()
    # Its trial's process ends with it (it holds the run's lock while it lives), rather than train on alone.
    with (folder / "trial_2" / ".lock").open("a") as lock:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "trial 2 kept running after its sweep was killed"
                time.sleep(0.2)
    third = run_main(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Trials 2 were left running by a worker that ended: marked failed" in third.stdout
    held = trials(tmp_path)
    assert [t.state for t in held] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        *[TrialState.COMPLETE] * 2,
    ]
    assert held[1].user_attrs[REASON] == "stopped by SIGTERM" and not held[1].user_attrs.get(COUNTS)
    assert results(folder / "trial_0") == done and held[0].value == done["validation"]["val/loss"]
    reasons = {row["number"]: row["reason"] for row in csv.DictReader((folder / "trials.csv").open())}
    assert reasons["2"] == "interrupted: its worker stopped before the trial ended"


@pytest.mark.slow
def test_two_workers_share_one_journal_file(tmp_path: Path, start) -> None:
    space = write_space(tmp_path)
    args = sweep_args(space, "--sweep.n_trials", "4", "--trainer.max_epochs", "1")
    workers = [start(tmp_path, *args) for _ in range(2)]
    assert [worker.wait(timeout=600) for worker in workers] == [0, 0], (tmp_path / "sweep-0.log").read_text()[-3000:]
    check_shared(tmp_path, trials(tmp_path), workers, 4)


def check_shared(cwd: Path, held: list, workers: list[subprocess.Popen], n_trials: int) -> None:
    """n_trials completed in all, by both workers, none twice, each with its run's result."""
    complete = [t for t in held if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    # A worker may ask for one trial too many as the other takes the last: it is failed unrun, and does not count.
    assert all(t.user_attrs[REASON].startswith("not run") for t in held if t.state != TrialState.COMPLETE)
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == n_trials
    assert {t.user_attrs[WORKER]["pid"] for t in complete} == {worker.pid for worker in workers}
    for trial in complete:
        assert trial.value == results(cwd / trial.user_attrs[RUN_DIR])["validation"]["val/loss"]


@pytest.mark.slow
def test_two_workers_share_a_postgresql_server(tmp_path: Path, start) -> None:
    space = write_space(tmp_path)
    with postgres_server() as url:
        args = sweep_args(space, "--sweep.n_trials", "4", "--trainer.max_epochs", "1", "--sweep.storage", url)
        workers = [start(tmp_path, *args) for _ in range(2)]
        assert [worker.wait(timeout=600) for worker in workers] == [0, 0], (tmp_path / "sweep-0.log").read_text()
        check_shared(tmp_path, trials(tmp_path, storage=url), workers, 4)
    assert not (tmp_path / "runs" / "sweeps" / "tiny" / "study.journal").exists()


@pytest.mark.slow
def test_a_diverging_trial_fails_a_hopeless_one_is_pruned_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # Sampler seed 10 tries lr 0.05 first, then 1e30 (the loss becomes nan), then 1e-6 (barely learns).
    space = write_space(tmp_path, "model.lr: {categorical: [0.05, 1.0e-6, 1.0e+30]}\n")
    pruning = ["--sweep.pruner", "median", "--sweep.pruner_args", '{"n_startup_trials": 1}']
    run = run_main(*sweep_args(space, "--sweep.n_trials", "3", "--sweep.seed", "10", *pruning), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    good, diverged, hopeless = trials(tmp_path)
    assert [t.params["model.lr"] for t in (good, diverged, hopeless)] == [0.05, 1.0e30, 1.0e-6]
    assert good.state == TrialState.COMPLETE
    assert diverged.state == TrialState.FAIL and diverged.user_attrs[COUNTS]
    assert "the training loss became nan" in diverged.user_attrs[REASON]
    assert hopeless.state == TrialState.PRUNED and hopeless.value == hopeless.intermediate_values[0]
    # Pruned after its first epoch of two, its run is whole up to there: checkpoints, results, config.
    directory = tmp_path / hopeless.user_attrs[RUN_DIR]
    assert list(hopeless.intermediate_values) == [0]
    assert sorted(p.name for p in (directory / "checkpoints").glob("*.ckpt")) == ["best-epoch=0.ckpt", "last.ckpt"]
    assert results(directory)["validation"]["val/loss"] == hopeless.value
    assert "trial 2: pruned after epoch 0" in run.stdout


def test_a_trial_whose_heartbeat_stopped_is_failed(tmp_path: Path, monkeypatch) -> None:
    """In a database, a trial whose worker fell silent (killed on another machine) is failed by the next worker."""
    monkeypatch.setattr(sweep_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_study, "STALE_AFTER_S", 1)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    silent, beating = study.ask(), study.ask()
    sweep_study.heartbeat(storage, study, silent.number)()
    time.sleep(2)
    sweep_study.heartbeat(storage, study, beating.number)()
    assert sweep_study.fail_orphaned(study) == [silent.number]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


BAD_SPACES = {
    "unknown option": ("model.learning_rate: {float: [0.001, 0.1]}\n", "does not accept option 'model.learning_rate'"),
    "empty range": ("model.lr: {float: [0.1, 0.001]}\n", "the range [0.1, 0.001] is empty"),
    "unknown distribution": ("model.lr: {uniform: [0.001, 0.1]}\n", "unknown distribution 'uniform'"),
    "wrong type": ("data.batch_size: {categorical: [32, large]}\n", "data.batch_size 'large': Parser key"),
    "float for an int": ("data.batch_size: {float: [16, 64]}\n", "Expected a <class 'int'>"),
    "not numbers": ("model.lr: {float: [small, large]}\n", "float takes [low, high], two float numbers"),
    "searched and given": ("model.lr: {float: [0.001, 0.1]}\n", "--model.lr is given on the command line"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_wrong_search_space_is_one_error_line(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    text, expected = BAD_SPACES[case]
    monkeypatch.chdir(tmp_path)
    extra = ["--model.lr", "0.01"] if case == "searched and given" else []
    assert sweep.main(sweep_args(write_space(tmp_path, text), *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "runs").exists()


HOSTILE = {
    "python tag": "model.lr: !!python/object/apply:os.system ['touch {marker}']\n",
    "python tag in a value": "model.lr: {categorical: [!!python/object/apply:os.system ['touch {marker}']]}\n",
    "class_path of a plain value": (
        "model.loss_args: {categorical: [{class_path: subprocess.Popen, init_args: {args: [touch, '{marker}']}}]}\n"
    ),
    "class_path of a callback": (
        "trainer.callbacks: {categorical: [[{class_path: subprocess.Popen, init_args: {args: [touch, '{marker}']}}]]}\n"
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_search_space_runs_nothing(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "ran"
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, HOSTILE[case].replace("{marker}", str(marker)))
    assert sweep.main(sweep_args(space)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not marker.exists() and not (tmp_path / "runs").exists()
