"""A sweep's Optuna study: where it is stored, its pruner, which trials count toward n_trials, and the trials that a
worker which stopped left behind. Imported by the sweep command and by a trial's TrialPruning callback only."""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from files import make_dir, process_running
from utils import ConfigError, did_you_mean

# How the sweep tells a trial's process which trial it runs: a JSON object in this environment variable (storage,
# study, trial number, pruner). Not an option, so that a storage URL's password stays out of the process list, and
# no config file can point a run at a study.
TRIAL_VARIABLE = "TEMPLATE_SWEEP_TRIAL"
# `--sweep.pruner NAME`: Optuna's pruners that need no other pruner to wrap.
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}
# A database's trials carry a heartbeat, sent this often (seconds) by their worker: a trial whose worker fell silent
# for STALE_AFTER_S (killed, or its machine gone) is marked failed by the next worker that starts.
HEARTBEAT_S, STALE_AFTER_S = 60, 180
OPEN_ATTEMPTS = 3
# Trial user attributes the sweep writes.
OPTIONS, RUN_DIR, WORKER, REASON, COUNTS, PRUNED_AT = "options", "run_dir", "worker", "reason", "counts", "pruned_at"


def open_storage(where: str) -> BaseStorage:
    """The storage `where` names: a database URL (postgresql://user@host/db, sqlite:///file.db; anything SQLAlchemy
    reads), or the path of an Optuna journal file, which several processes on one machine share safely."""
    if "://" not in where:
        path = Path(where)
        make_dir(path.parent)
        return JournalStorage(JournalFileBackend(str(path)))
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        shown = make_url(where).render_as_string(hide_password=True)
    except ArgumentError as error:
        raise ConfigError(f"--sweep.storage: {error}; give a database URL or a journal file's path") from error
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # Optuna calls the heartbeat experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(where, heartbeat_interval=HEARTBEAT_S, grace_period=STALE_AFTER_S)
        except SQLAlchemyError as error:  # workers that start at once on a new database race to create its tables
            failed = error
            time.sleep(1 + attempt)
        except ImportError as error:
            raise ConfigError(f"--sweep.storage {shown}: cannot open it ({error})") from error
    reason = " ".join(str(getattr(failed, "orig", None) or failed).split())
    raise ConfigError(f"--sweep.storage {shown}: cannot open it ({reason})") from failed


def make_pruner(name: str, args: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Optuna's pruner `name` (a key of PRUNERS) built with the keyword arguments `args`."""
    if name not in PRUNERS:
        raise ConfigError(
            f"--sweep.pruner {name!r}: {did_you_mean(name, list(PRUNERS))}use one of {', '.join(PRUNERS)}"
        )
    try:
        return PRUNERS[name](**args)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"--sweep.pruner_args {json.dumps(args)}: {PRUNERS[name].__name__} refused it ({error})"
        ) from error


def open_study(storage: BaseStorage, name: str, direction: str, identity: dict[str, Any]) -> optuna.Study:
    """Create the study `name` in `storage`, or load it: a sweep run again, or another worker. `identity` (the search
    space, the metric, the options of every trial) must be the one it was created with."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    held = study.user_attrs.get("sweep")
    if held is None:
        study.set_user_attr("sweep", identity)
    held_direction = study.direction.name.lower()
    if (held or identity) != identity or held_direction != direction:
        held = held or identity
        different = [key for key in identity if held.get(key) != identity[key]]
        different += ["direction"] if held_direction != direction else []
        raise ConfigError(
            f"the study {name!r} in this storage is another sweep (its {', '.join(different)} differ: "
            f"{'; '.join(f'{key} {held.get(key, held_direction)}' for key in different)}); run it with the same "
            "options, or give this one a --sweep.name of its own"
        )
    return study


def counts(trial: FrozenTrial) -> bool:
    """Whether `trial` counts toward n_trials: running, or ended by itself (completed, pruned, failed). A trial that a
    stop interrupted, or one that a worker asked for once others had reached n_trials, does not."""
    if trial.state == TrialState.FAIL:
        return bool(trial.user_attrs.get(COUNTS))
    return trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def worker() -> dict[str, Any]:
    """This process, as the worker that runs a trial."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphaned(study: optuna.Study) -> list[int]:
    """Mark failed the running trials whose worker ended without finishing them, and return their numbers: those of a
    process of this machine that no longer runs, and in a database, those whose heartbeat stopped (any machine)."""
    running = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():  # Optuna calls it experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    here = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER) or {}
        pid = owner.get("pid")
        # This process's own number is a former process's that the system gave again (a restarted container).
        if owner.get("host") == here and isinstance(pid, int) and (pid == os.getpid() or not process_running(pid)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)  # another worker may be first
            failed.append(trial.number)
    still = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted({*failed, *(running - still)})


def heartbeat(storage: BaseStorage, study: optuna.Study, number: int) -> Callable[[], None] | None:
    """What records a heartbeat of trial `number`, for a storage that keeps them (a database); else None."""
    if not isinstance(storage, RDBStorage):
        return None
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    return lambda: storage.record_heartbeat(trial_id)
