"""The table of many runs' results: per metric the mean, the sample standard deviation and each run's value, the
config that differs between the runs, and optionally the runs' ensemble on the test set. `python main.py aggregate
DIR` writes it (results.md, results.csv, results.json) for an experiment of `cv` or `repeat`, or any folder of runs;
a run of an experiment that is missing or has no results is named, never averaged over."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from callbacks.results import FINAL_PARTS, RESULTS_FILE, json_ready
from files import write_atomically
from trust import load_yaml_file
from utils import ConfigError

EXPERIMENT_FILE = "experiment.json"


def aggregate(folder: Path, *, ensemble: bool = False) -> str:
    """Gather the results of the runs in `folder`, write results.md, results.csv and results.json there, and return
    the Markdown table. With experiment.json, the runs it lists, each of which must have results; without, every
    subfolder that has a run's results.json (the runs that have none are named under the table). With `ensemble`,
    the test metrics of the runs' mean class probabilities too."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}; give a folder of runs")
    experiment_file = folder / EXPERIMENT_FILE
    experiment = read_json(experiment_file) if experiment_file.is_file() else None
    without: list[str] = []  # runs of a plain folder that have no results
    if experiment is not None:
        names = experiment.get("runs")
        if not isinstance(names, dict) or not names or not all(_plain_name(name) for name in names):
            raise ConfigError(f"{experiment_file}: its runs are not a mapping of run folder names; no experiment")
        names = list(names)
        problems = [f"{name} ({why})" for name in names if (why := _missing(folder / name)) is not None]
        if problems:
            raise ConfigError(
                f"{folder}: {len(problems)} of the {len(names)} runs of the experiment have no results, so nothing "
                f"is averaged: {'; '.join(problems)}; run them (the same {experiment.get('kind')} command goes on "
                "with them), then aggregate"
            )
    else:
        runs = sorted(path.parent.name for path in folder.glob("*/config.yaml"))
        names = [name for name in runs if finished(folder / name)]
        without = [name for name in runs if name not in names]
        if not names:
            raise ConfigError(f"{folder}: no subfolder holds the {RESULTS_FILE} of a run; give a folder of runs")
        _check_folds(folder, runs, names)
    results = {name: read_json(folder / name / RESULTS_FILE) for name in names}
    metrics, left_out = _metrics(results)
    summary: dict[str, Any] = {
        "kind": experiment.get("kind") if experiment else None,
        "runs": names,
        "std": "sample standard deviation (ddof=1)",
        "metrics": metrics,
        "left_out": left_out,
        "runs_without_results": without,
        "config_differs": _config_differs(folder, names),
    }
    if ensemble:
        summary["ensemble"] = ensemble_test(folder, names, results)
    table = _markdown(folder, summary)
    write_atomically(folder / "results.md", lambda file: file.write(table.encode()))
    write_atomically(folder / "results.csv", lambda file: file.write(_csv(summary).encode()))
    text = json.dumps(json_ready(summary), indent=2) + "\n"
    write_atomically(folder / RESULTS_FILE, lambda file: file.write(text.encode()))
    return table


def _plain_name(name: Any) -> bool:
    """Whether `name` names a folder inside the experiment's (no path, nothing above it)."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _check_folds(folder: Path, runs: list[str], names: list[str]) -> None:
    """For the folds of one cross-validation run as separate jobs (`fit --data.num_folds K --data.fold I`, found in
    a plain folder of runs): every fold 0..K-1 must have one run with results (`names`), else those that do not
    are named."""
    folds: dict[str, tuple[Any, Any]] = {}
    for name in runs:
        config = load_yaml_file(folder / name / "config.yaml")
        data = config.get("data") if isinstance(config, dict) else None
        if isinstance(data, dict) and data.get("num_folds"):
            if not isinstance(data["num_folds"], int) or not isinstance(data.get("fold"), int):
                raise ConfigError(f"{folder / name / 'config.yaml'}: data.num_folds and data.fold are not integers")
            folds[name] = (data["num_folds"], data["fold"])
    if not folds:
        return
    counts = {k for k, _ in folds.values()}
    if len(counts) > 1 or len(folds) < len(runs):
        raise ConfigError(f"{folder} mixes runs of different cross-validations, or with none; aggregate one at a time")
    k = counts.pop()
    done = [fold for name, (_, fold) in folds.items() if name in names]
    missing = [str(fold) for fold in range(k) if fold not in done]
    twice = sorted({str(fold) for fold in done if done.count(fold) > 1})
    if missing or twice:
        problems = [f"fold {', '.join(missing)} of {k} has no run with results" if missing else ""]
        problems.append(f"fold {', '.join(twice)} has more than one run" if twice else "")
        raise ConfigError(f"{folder}: {'; '.join(p for p in problems if p)}, so nothing is averaged")


def _missing(run: Path) -> str | None:
    """Why the run directory `run` has no results to aggregate, or None when it has."""
    if not run.is_dir():
        return "not run"
    if not (run / RESULTS_FILE).is_file():
        return f"no {RESULTS_FILE}: it failed, was stopped or is still running"
    if not finished(run):
        return f"its {RESULTS_FILE} has no validation or test metrics"
    return None


def _metrics(results: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Per metric ("test test/acc", "fit val/acc_best"...): each run's value, their mean and sample std; and the
    metrics that some runs lack, with those runs, which are left out rather than averaged over the others (a fit
    resumed after its training had ended logs no train/* metrics)."""
    values: dict[str, dict[str, float]] = {}
    for name, result in results.items():
        for part in FINAL_PARTS:
            metrics = result.get(part) or {}
            if not isinstance(metrics, dict):
                raise ConfigError(f"{name}/{RESULTS_FILE}: its {part!r} is not a mapping of metrics to values")
            for metric, value in sorted(metrics.items()):
                values.setdefault(f"{part} {metric}", {})[name] = _value(value, f"{name}/{RESULTS_FILE}: {metric}")
    left_out = {metric: [n for n in results if n not in by_run] for metric, by_run in values.items()}
    left_out = {metric: lacking for metric, lacking in left_out.items() if lacking}
    values = {metric: by_run for metric, by_run in values.items() if metric not in left_out}
    return {
        metric: {**_mean_and_std(list(by_run.values())), "values": by_run} for metric, by_run in values.items()
    }, left_out


def _value(value: Any, where: str) -> float:
    """A metric's value as results.json holds it: a number, or "nan"/"inf"/"-inf" (JSON has no literal for them)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    raise ConfigError(f"{where} is {json.dumps(value)}, not a number")


def _mean_and_std(values: list[float]) -> dict[str, float]:
    """The mean and the sample standard deviation (ddof=1; nan for one value); a nan or inf among the values gives
    nan, as a diverged run should, where the statistics module would fail."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2 or not math.isfinite(mean):
        return {"mean": mean, "std": math.nan}
    return {"mean": mean, "std": math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))}


def _config_differs(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """The config keys (flattened, `data.fold`) whose values differ between the runs' config.yaml files, other than
    the logger's version, which is the run's folder."""
    configs = {}
    for name in names:
        path = folder / name / "config.yaml"
        configs[name] = _flat(load_yaml_file(path)) if path.is_file() else {}
    keys = sorted({key for config in configs.values() for key in config})
    differ = {}
    for key in keys:
        if key == "trainer.logger.init_args.version":
            continue
        values = {name: configs[name].get(key) for name in names}
        if any(value != values[names[0]] for value in values.values()):  # by value: 0 and 0.0 are the same
            differ[key] = values
    return differ


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return flat


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _markdown(folder: Path, summary: dict[str, Any]) -> str:
    names = summary["runs"]
    kind = f"{summary['kind']}, " if summary["kind"] else ""
    lines = [
        f"# {folder}: {kind}{len(names)} runs",
        "",
        "std is the sample standard deviation (ddof=1) over the runs.",
        "",
        f"| metric | mean | std | {' | '.join(names)} |",
        "|---" * (3 + len(names)) + "|",
    ]
    for metric, row in summary["metrics"].items():
        cells = [_number(row["mean"]), _number(row["std"]), *(_number(row["values"][n]) for n in names)]
        lines.append(f"| {metric} | {' | '.join(cells)} |")
    if left_out := summary["left_out"]:
        missing = "; ".join(f"{metric} (missing from {', '.join(runs)})" for metric, runs in left_out.items())
        lines += ["", f"Left out, as not every run has them: {missing}."]
    if without := summary["runs_without_results"]:
        lines += ["", f"Runs without results, not included: {', '.join(without)}."]
    if ensemble := summary.get("ensemble"):
        lines += ["", f"Ensemble of the {len(names)} runs (mean of their class probabilities) on the test set:", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {metric} | {_number(value)} |" for metric, value in ensemble.items()]
    if differs := summary["config_differs"]:
        lines += ["", "Config that differs between the runs:", ""]
        lines += [f"| key | {' | '.join(names)} |", "|---" * (1 + len(names)) + "|"]
        lines += [f"| {key} | {' | '.join(_shown(values[n]) for n in names)} |" for key, values in differs.items()]
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _csv(summary: dict[str, Any]) -> str:
    """The metrics' rows (metric, mean, std, each run's value), the ensemble's, then the differing config's."""
    names = summary["runs"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "mean", "std_ddof1", *names])
    for metric, row in summary["metrics"].items():
        writer.writerow([metric, row["mean"], row["std"], *(row["values"][n] for n in names)])
    for metric, value in (summary.get("ensemble") or {}).items():
        writer.writerow([f"ensemble {metric}", value, "", *([""] * len(names))])
    for key, values in summary["config_differs"].items():
        writer.writerow([f"config {key}", "", "", *(_shown(values[n]) for n in names)])
    return out.getvalue()


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the file at `path`, or a ConfigError naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot be read as JSON ({error})") from error
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return value


# --- the ensemble ----------------------------------------------------------------------------------------------------


def ensemble_test(folder: Path, names: list[str], results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The test accuracy and cross-entropy of the mean of the runs' class probabilities: each run's best checkpoint
    (its results.json's `best_checkpoint`) on the test split of the first run's data config."""
    import torch

    from data.data_interface import DInterface
    from model.model_interface import MInterface

    mean_probabilities, targets = None, None
    for name in names:
        recorded = results[name].get("best_checkpoint")
        # The run's own checkpoints folder, wherever the experiment was moved to since.
        checkpoint = folder / name / "checkpoints" / Path(recorded).name if isinstance(recorded, str) else None
        if checkpoint is None or not checkpoint.is_file():
            raise ConfigError(f"--ensemble: run {name} in {folder} has no best checkpoint ({recorded}) to load")
        model = MInterface.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        if targets is None:
            config = load_yaml_file(folder / name / "config.yaml")
            if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
                raise ConfigError(f"--ensemble: {folder / name / 'config.yaml'} has no data section to test on")
            try:
                data = DInterface(**config["data"])
            except TypeError as error:  # a config of another version of the template
                raise ConfigError(f"--ensemble: {folder / name / 'config.yaml'}: its data section: {error}") from error
            data.setup("test")
            targets = torch.cat([y for _, y in data.test_dataloader()])
        outputs = []
        with torch.no_grad():
            for x, _ in data.test_dataloader():
                outputs.append(model(x))
        logits = torch.cat(outputs)
        if logits.dim() != 2 or targets.dim() != 1:
            raise ConfigError("--ensemble is for classification: the models' outputs are not class scores")
        probabilities = logits.softmax(dim=1)
        mean_probabilities = probabilities if mean_probabilities is None else mean_probabilities + probabilities
    mean_probabilities = mean_probabilities / len(names)
    return {
        "test/acc": (mean_probabilities.argmax(dim=1) == targets).float().mean().item(),
        "test/loss": torch.nn.functional.nll_loss(mean_probabilities.clamp_min(1e-12).log(), targets).item(),
    }


def finished(run: Path) -> bool:
    """Whether the run directory `run` has all its results: the validation of its best checkpoint, and its test
    unless its config switched that off (a run stopped during its test has the first only)."""
    path = run / RESULTS_FILE
    if not path.is_file():
        return False
    try:
        results = read_json(path)
        config = load_yaml_file(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    except ConfigError:
        return False
    tests = not isinstance(config, dict) or config.get("test_after_fit", True) is not False
    parts = ("validation", "test") if tests else ("validation",)
    return all(isinstance(results.get(part), dict) and results[part] for part in parts)
