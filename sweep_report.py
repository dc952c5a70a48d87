"""What a sweep leaves in its folder: trials.csv (every trial), best.yaml (a config that trains the best trial again),
the plots of the optimisation history and of the parameters' importances, and the best trial in a few lines."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from files import write_atomically
from sweep_space import TrialConfigs
from sweep_study import OPTIONS, PRUNED_AT, REASON, RUN_DIR

TRIALS_FILE, BEST_FILE = "trials.csv", "best.yaml"
HISTORY_PLOT, IMPORTANCES_PLOT = "history.png", "importances.png"


def report(study: optuna.Study, folder: Path, configs: TrialConfigs, metric: str) -> list[str]:
    """Write trials.csv, best.yaml and the plots into `folder` from all the study's trials so far (every worker's),
    and return the lines that tell the user about them."""
    trials = study.get_trials(deepcopy=False)
    options = list(dict.fromkeys(option for trial in trials for option in trial.user_attrs.get(OPTIONS, {})))
    _write_text(folder / TRIALS_FILE, _trials_csv(trials, options))
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState if state.is_finished()}
    lines = [f"{len(trials)} trials: " + ", ".join(f"{n} {state}" for state, n in states.items() if n)]
    lines.append(f"Every trial's state, options, {metric} and duration: {folder / TRIALS_FILE}")
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not complete:
        lines.append(f"No trial has completed, so none is best yet (why: the reason column of {TRIALS_FILE})")
        return lines
    best = study.best_trial
    values = best.user_attrs[OPTIONS]
    header = (
        f"# The best trial of sweep {study.study_name!r}: trial {best.number}, {metric} {best.value:.6g} (its run: "
        f"{best.user_attrs.get(RUN_DIR)}).\n# Train it again, as a new run: python main.py fit --config "
        f"{folder / BEST_FILE}\n"
    )
    whole = configs.whole(values)
    _write_text(folder / BEST_FILE, header + yaml.safe_dump(whole, sort_keys=False))
    lines += [
        f"Best trial: {best.number}, {metric} {best.value:.6g}, in {best.user_attrs.get(RUN_DIR)}",
        *(f"  {option}: {json.dumps(value)}" for option, value in values.items()),
        f"Its config, to train it again: python main.py fit --config {folder / BEST_FILE}",
    ]
    lines += _plots(study, folder, metric, len(complete))
    return lines


def _trials_csv(trials: list[FrozenTrial], options: list[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", "value", "duration_s", *options, "run_dir", "reason"])
    for trial in trials:
        duration = trial.duration.total_seconds() if trial.duration else None
        values = trial.user_attrs.get(OPTIONS, {})
        writer.writerow(
            [
                trial.number,
                trial.state.name.lower(),
                "" if trial.value is None else trial.value,
                "" if duration is None else f"{duration:.1f}",
                *(_cell(values[option]) if option in values else "" for option in options),
                trial.user_attrs.get(RUN_DIR, ""),
                _reason(trial),
            ]
        )
    return text.getvalue()


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _reason(trial: FrozenTrial) -> str:
    """Why a trial did not complete."""
    if trial.state == TrialState.PRUNED and PRUNED_AT in trial.user_attrs:
        return f"pruned after epoch {trial.user_attrs[PRUNED_AT]}"
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get(REASON) or "interrupted: its worker stopped before the trial ended"
    return trial.user_attrs.get(REASON, "")


def _plots(study: optuna.Study, folder: Path, metric: str, complete: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save(plt, plots.plot_optimization_history(study, target_name=metric), folder / HISTORY_PLOT)
        written = [HISTORY_PLOT]
        if complete < 2:
            lines.append(f"The parameters' importances need 2 completed trials or more: {IMPORTANCES_PLOT} not written")
        else:
            try:
                importances = plots.plot_param_importances(study, target_name=metric)
            except (ValueError, RuntimeError) as error:  # e.g. no parameter varied among the completed trials
                lines.append(
                    f"The parameters' importances could not be computed ({error}): {IMPORTANCES_PLOT} not written"
                )
            else:
                _save(plt, importances, folder / IMPORTANCES_PLOT)
                written.append(IMPORTANCES_PLOT)
    lines.insert(0, f"Plots: {', '.join(str(folder / name) for name in written)}")
    return lines


def _save(plt: Any, axes: Any, path: Path) -> None:
    figure = axes.figure
    figure.set_size_inches(8, 5)
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100, bbox_inches="tight"))
    plt.close(figure)


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))
