"""The search space of a sweep: a YAML file keyed by the CLI's own option names, each with the values to try as an
Optuna distribution; checked against the CLI's own parser before the first trial.

    model.lr: {float: [1.0e-4, 1.0e-1], log: true}        # log: sampled evenly in log scale
    model.net_args.hidden_sizes: {categorical: [[128], [256], [256, 128]]}
    data.batch_size: {int: [32, 256], step: 32}

`float` and `int` take [low, high] (both included) and optionally `log: true` or `step: S`; `categorical` takes the
list of values, which may be lists or dicts (Optuna is given those as JSON text).
"""

from __future__ import annotations

import json
from argparse import ArgumentError
from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from command_line import ALIASES, read_command_line
from main import TemplateCLI
from trust import check_config, load_yaml_file, shown
from utils import ConfigError, did_you_mean

KINDS = ("float", "int", "categorical")
SETTINGS = {"float": ("log", "step"), "int": ("log", "step"), "categorical": ()}
# Options that a sweep sets for each trial, or that choose which options exist.
NOT_SEARCHED = {
    "trainer.logger": "the sweep puts each trial's run in its folder",
    "ckpt_path": "each trial trains from the start",
    "model.net": "give the model with --model; one sweep searches one model's options",
    "data.dataset": "give the dataset with --data; one sweep searches one dataset's options",
}
PLAIN = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched option: `kind` is float, int or categorical; `values` is [low, high] or the choices."""

    option: str
    kind: str
    values: tuple[Any, ...]
    log: bool = False
    step: float | None = None

    @property
    def encoded(self) -> bool:
        """Whether the choices go to Optuna as JSON text: it stores plain values only (not lists or dicts)."""
        return self.kind == "categorical" and not all(isinstance(value, PLAIN) for value in self.values)

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this option, sampled by Optuna."""
        if self.kind == "float":
            return trial.suggest_float(self.option, *self.values, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.option, *self.values, log=self.log, step=int(self.step or 1))
        if self.encoded:
            return json.loads(trial.suggest_categorical(self.option, [json.dumps(v) for v in self.values]))
        return trial.suggest_categorical(self.option, list(self.values))


def read_space(path: str) -> list[Dimension]:
    """The search space in the YAML file at `path` (read safely: nothing in it runs), or a ConfigError naming what is
    wrong in it."""
    content = load_yaml_file(path)
    if not isinstance(content, dict) or not content:
        raise ConfigError(
            f"--sweep {path}: a search space maps option names to distributions, e.g. "
            "`model.lr: {float: [1.0e-4, 1.0e-1], log: true}`"
        )
    return [_dimension(path, option, spec) for option, spec in content.items()]


def _dimension(path: str, option: Any, spec: Any) -> Dimension:
    where = f"--sweep {path}: {option}"
    if not isinstance(option, str):
        raise ConfigError(f"--sweep {path}: {shown(option)} is no option name; write them as model.lr, data.batch_size")
    for refused, why in NOT_SEARCHED.items():
        if option == refused or option.startswith(f"{refused}."):
            raise ConfigError(f"{where}: not searchable ({why})")
    kinds = [key for key in spec if key in KINDS] if isinstance(spec, dict) else []
    if len(kinds) != 1:
        unknown = [str(key) for key in spec if key not in KINDS] if isinstance(spec, dict) else []
        hint = f"unknown distribution {unknown[0]!r}: {did_you_mean(unknown[0], KINDS)}" if unknown else ""
        raise ConfigError(
            f"{where}: {hint}give one distribution of {', '.join(KINDS)}, e.g. {{float: [1.0e-4, 1.0e-1], log: true}}"
        )
    kind = kinds[0]
    extra = [str(key) for key in spec if key != kind and key not in SETTINGS[kind]]
    if extra:
        allowed = f"takes {' and '.join(SETTINGS[kind])}" if SETTINGS[kind] else "takes no settings"
        raise ConfigError(f"{where}: {kind} {allowed}, not {', '.join(extra)}")
    values, log, step = spec[kind], spec.get("log", False), spec.get("step")
    if kind == "categorical":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: categorical takes a non-empty list of the values to try")
        texts = [json.dumps(value, sort_keys=True, default=str) for value in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"{where}: categorical lists a value twice")
        return Dimension(option, kind, tuple(values))
    number = (int,) if kind == "int" else (int, float)
    if not (isinstance(values, list) and len(values) == 2 and all(_is(v, number) for v in values)):
        raise ConfigError(f"{where}: {kind} takes [low, high], two {kind} numbers, got {shown(values)}")
    low, high = values
    if low >= high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty; give low < high")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log is true or false, got {shown(log)}")
    if step is not None and (not _is(step, number) or step <= 0 or log):
        raise ConfigError(f"{where}: step is a {kind} number > 0, and not with log: true; got {shown(step)}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
    cast = int if kind == "int" else float
    return Dimension(option, kind, (cast(low), cast(high)), log, None if step is None else cast(step))


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def as_config(values: dict[str, Any]) -> dict[str, Any]:
    """The options `values` ({"model.lr": 0.01}) as a nested config ({"model": {"lr": 0.01}})."""
    config: dict[str, Any] = {}
    for option, value in values.items():
        *parents, name = option.split(".")
        place = config
        for parent in parents:
            place = place.setdefault(parent, {})
        place[name] = value
    return config


class _Built(Exception):
    """Carries the CLI's parser out of TemplateCLI before it parses anything."""


class _ParserOnly(TemplateCLI):
    def parse_arguments(self, parser: Any, args: Any) -> None:
        raise _Built(parser)


class TrialConfigs:
    """The CLI's own parser of `fit`, with the options every trial shares (`fit_args`): it checks a search space,
    and writes the whole config a trial runs with."""

    def __init__(self, fit_args: list[str]) -> None:
        self.fit_args = fit_args
        command_line = read_command_line(["fit", *fit_args])
        self.argv = command_line.argv
        strict = {"exit_on_error": False}  # errors come back as exceptions, for messages of the sweep's own
        try:
            _ParserOnly(command_line, args=self.argv, parser_kwargs={**strict, "fit": strict})
        except _Built as built:
            self.parser = built.args[0]
        self.parse({}, "the options given for every trial")

    def parse(self, values: dict[str, Any], what: str) -> Any:
        """The parsed config of `fit` with the trial's `values`, or a ConfigError that names `what` was refused."""
        argv = [*self.argv, "--config", yaml.safe_dump(as_config(values), default_flow_style=True)]
        try:
            config = self.parser.parse_args(argv)
            check_config(config.fit)
        except (ArgumentError, ValueError, TypeError) as error:  # the parser's, or a check's (ConfigError)
            message = " ".join(str(error).split())
            raise ConfigError(f"{what}: {message}") from error
        return config

    def check(self, space: list[Dimension], path: str) -> None:
        """Parse each searched option at its bounds or each of its choices: an unknown option or a value its type
        refuses is a ConfigError now, not a failed trial later."""
        for dimension in space:
            for arg in self.fit_args:
                key = arg.partition("=")[0]
                given = ALIASES.get(key, key).removeprefix("--")
                if "." in given and (given == dimension.option or dimension.option.startswith(f"{given}.")):
                    raise ConfigError(
                        f"--{given} is given on the command line and searched by --sweep {path}; drop one of them"
                    )
            for value in dimension.values:
                self.parse({dimension.option: value}, f"--sweep {path}: {dimension.option} {shown(value)}")

    def whole(self, values: dict[str, Any]) -> dict[str, Any]:
        """The whole config (every option, as config.yaml holds it) of a run of `fit` with `values`."""
        config = self.parse(values, "the best trial's options")
        return yaml.safe_load(self.parser.dump(config, skip_none=False))["fit"]
