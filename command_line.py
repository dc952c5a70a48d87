"""One pass over the command line, before LightningCLI parses it: the default subcommand, the `--model NAME` and
`--data NAME` shorthands, the short aliases, and which model and dataset the run uses.

The full parser needs the model's and dataset's names first, to add their constructor arguments as
`--model.net_args.*` and `--data.dataset_args.*`.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.data_interface import DInterface
from model.model_interface import MInterface
from runs import RUNS_DIR, latest_checkpoint
from trust import load_checkpoint, load_yaml_file
from utils import ROOT, ConfigError, available, did_you_mean

# Lightning's learning-rate and batch-size finders run as subcommands too (see finders.py).
SUBCOMMANDS = ("fit", "validate", "test", "predict", "lr_find", "scale_batch_size")
# Handled by main.py before LightningCLI.
OWN_COMMANDS = ("env", "export", "cv", "repeat", "aggregate", "sweep")
# `--model NAME` / `--data NAME` set these keys.
SHORTHANDS = {"--model": "--model.net", "--data": "--data.dataset"}
NAME_KEYS = {"model": "net", "data": "dataset"}
# Short forms of common options.
ALIASES = {
    "--data.root": "--data.dataset_args.root",
    "--optimizer": "--model.optimizer",
    "--lr_scheduler": "--model.lr_scheduler",
}


@dataclass
class CommandLine:
    """A command line as LightningCLI takes it, the model and dataset it selects, and the config files it reads."""

    argv: list[str]
    model: str
    data: str
    configs: list[str]
    # The checkpoint file that `--ckpt_path last|best` of validate, test or predict meant here, whose data it brought.
    checkpoint: str | None = None


def read_command_line(argv: list[str]) -> CommandLine:
    """Insert the default `fit` subcommand, expand the shorthands and aliases, and find the model and dataset.

    `--model NAME` means `configs/NAME.yaml` when that exists (placed first, so that every other option overrides
    it), plus `model/NAME.py` when that exists (so an experiment config like `configs/resnet.yaml` is selected by
    its name). `--data NAME` selects `data/NAME.py`, and `configs/NAME.yaml` only when that holds data options
    alone: choosing a dataset never changes the model, the optimizer or the trainer. Later settings win, as in
    the parser itself. A checkpoint given with `--ckpt_path` names the model (LightningCLI applies its
    hyperparameters last; a different model chosen on the command line is an error), and for validate, test and
    predict the data module it was trained with, which every option given overrides; so does `--ckpt_path last` or
    `best`, which means the latest run of the model under runs/<model>. Idempotent, because DDP re-launches this
    script with the rewritten `sys.argv`.
    """
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        commands = [*SUBCOMMANDS, *OWN_COMMANDS]
        raise ConfigError(
            f"unknown subcommand {argv[0]!r}: {did_you_mean(argv[0], commands)}use one of {', '.join(commands)} "
            "(or none, for fit)"
        )
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["fit", *argv]
    subcommand = argv[0]
    names: dict[str, str] = {
        "model": inspect.signature(MInterface).parameters["net"].default,
        "data": inspect.signature(DInterface).parameters["dataset"].default,
    }
    configs: dict[str, list[str]] = {"model": [], "data": []}  # those that shorthands select, read before the rest
    rest: list[str] = []
    read: list[str] = []  # every config file, in the order the parser reads them
    from_configs: dict[str, dict[str, str]] = {"model": {}, "data": {}}
    from_rest: dict[str, str] = {}
    chosen, held, held_data = None, None, None  # the model named on the command line; the checkpoint's model, data
    kind, checkpoint = None, None  # `--ckpt_path last|best`, and the file it means
    tokens = iter(argv[1:])
    for token in tokens:
        key, eq, value = token.partition("=")
        key = ALIASES.get(key, key)
        takes_value = key in SHORTHANDS or key in SHORTHANDS.values() or key in ("-c", "--config", "--ckpt_path")
        if takes_value:
            value = value if eq else next(tokens, "")
        group = key[2:].split(".")[0]
        if key in SHORTHANDS and value and not _is_file_name(value):
            config = ROOT / "configs" / f"{value}.yaml"
            content = load_yaml_file(config) if config.is_file() else None
            if content is not None and (group == "model" or _data_only(content)):
                configs[group] += ["--config", str(config)]
                read.append(str(config))
                found = _names_in(content)
                from_configs[group].update(found)
                chosen = found.get("model") or chosen
            if content is None or value in available(group):
                rest += [SHORTHANDS[key], value]
                from_rest[group] = value
                chosen = value if group == "model" else chosen
            continue
        if key in SHORTHANDS.values():
            from_rest[group] = value
            chosen = value if group == "model" else chosen
        elif key in ("-c", "--config") and _is_file(value):
            config = load_yaml_file(value)
            read.append(value)
            found = _names_in(config)
            from_rest.update(found)
            chosen = found.get("model") or chosen
            ckpt_path = config.get("ckpt_path") if isinstance(config, dict) else None
            if isinstance(ckpt_path, str) and _is_file(ckpt_path):
                held, held_data = _held(ckpt_path)
        elif key in SHORTHANDS and value.lstrip().startswith("{"):  # inline, as the checkpoint's data inserted above
            if name := _name(_json(value), group):
                from_rest[group] = name
                chosen = name if group == "model" else chosen
        elif key in SHORTHANDS and _is_file(value):  # a sub-config of the model or the data
            name = _name(load_yaml_file(value), group)
            read.append(value)
            if name:
                from_rest[group] = name
                chosen = name if group == "model" else chosen
        elif key == "--ckpt_path" and _is_file(value):
            held, held_data, kind = *_held(value), None
        elif key == "--ckpt_path" and value in ("last", "best"):
            kind = value
        if takes_value:
            rest += [key + eq + value] if eq else [key, value] if value else [key]
        else:
            rest.append(key + eq + value)
    if kind and subcommand in ("validate", "test", "predict"):
        model = chosen or names["model"]
        # None when no run has a checkpoint yet: LightningCLI's parse then says so (see runs.resolve_ckpt_path).
        found = latest_checkpoint(Path(RUNS_DIR) / model, kind)
        if found is not None:
            checkpoint = str(found)
            held, held_data = _held(checkpoint)
    if held and chosen and held != chosen:
        raise ConfigError(
            f"--ckpt_path holds a checkpoint of model {held!r}, not {chosen!r}: give a checkpoint of "
            f"{chosen!r}, or leave the model out to use {held!r}"
        )
    names.update(from_configs["model"])
    held_argv: list[str] = []
    if held_data and subcommand in ("validate", "test", "predict"):
        # What the checkpoint's data module was, over the data options of the model's own config (configs/NAME.yaml
        # of `--model NAME`, which may name another dataset than the run's), under every other config and option.
        held_config = json.dumps(held_data, sort_keys=True)
        if not _holds(rest, ["--data", held_config]):  # if it does, this function inserted it (DDP's re-launch)
            held_argv = ["--data", held_config]
        names["data"] = held_data.get("dataset") or names["data"]
    names.update(from_configs["data"])
    names.update(from_rest)
    argv = [subcommand, *configs["model"], *held_argv, *configs["data"], *rest]
    return CommandLine(argv, held or names["model"], names["data"], read, checkpoint)


def _holds(tokens: list[str], pair: list[str]) -> bool:
    """Whether `tokens` hold the option and value `pair`, one after the other."""
    return any(tokens[i : i + 2] == pair for i in range(len(tokens) - 1))


def _held(ckpt_path: str) -> tuple[str | None, dict[str, Any] | None]:
    """The model's name and the data module's hyperparameters that the checkpoint at `ckpt_path` records."""
    checkpoint = load_checkpoint(ckpt_path)
    data = checkpoint.get("datamodule_hyper_parameters")
    return _name(checkpoint.get("hyper_parameters"), "model"), data if isinstance(data, dict) and data else None


def _json(text: str) -> Any:
    """The value of a JSON text, or None if it is none (the parser then names what is wrong with it)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _data_only(config: Any) -> bool:
    """Whether a config file holds data options alone, the only kind that `--data NAME` reads."""
    return isinstance(config, dict) and set(config) <= {"data"}


def _is_file_name(value: str) -> bool:
    """Whether a shorthand's value is a config (a file, or YAML/JSON text) rather than a name."""
    return value.endswith((".yaml", ".yml", ".json")) or value.lstrip().startswith("{") or _is_file(value)


def _is_file(value: str) -> bool:
    """Whether `value` names a file (a YAML or JSON text given inline can be too long for a file name)."""
    try:
        return Path(value).is_file()
    except OSError:
        return False


def _name(section: Any, group: str) -> str | None:
    """The model or dataset name set in one config section (`group` is model or data), if any."""
    name = section.get(NAME_KEYS[group]) if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def _names_in(config: Any) -> dict[str, str]:
    """The model and dataset names that a whole config file sets."""
    if not isinstance(config, dict):
        return {}
    found = {group: _name(config.get(group), group) for group in NAME_KEYS}
    return {group: name for group, name in found.items() if name}


def overview() -> str:
    """The main `--help`'s epilog: the shorthands, the models and datasets to choose from (each file's first
    docstring line), and the commands that are not the trainer's."""
    lines = [
        "shorthands:",
        "  --model NAME          model/NAME.py, starting from configs/NAME.yaml when it exists",
        "  --data NAME           data/NAME.py (and configs/NAME.yaml when it holds data options alone)",
        "  no subcommand         fit",
    ]
    for group, title in (("model", "models"), ("data", "datasets")):
        lines += ["", f"{title} (add one: a file in {group}/):"]
        lines += [f"  {name:<21} {_summary(ROOT / group / f'{name}.py')}" for name in available(group)]
    lines += [
        "",
        "other commands:",
        "  env                   versions, CPU, GPUs and their memory",
        "  export                a checkpoint's network as state_dict, TorchScript, ONNX (export --help)",
        "  cv, repeat            k-fold cross-validation, or one run per seed, then the results table",
        "  aggregate DIR         the results table of a folder of runs",
        "  sweep                 hyperparameter search on Optuna, each trial a run (sweep --help)",
        "",
        "A model's and a dataset's own options: python main.py fit --model NAME --data NAME --help",
    ]
    return "\n".join(lines)


def _summary(path: Path) -> str:
    """The first line of the docstring of the Python file at `path`, read without importing it."""
    try:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return ""
    return docstring.split("\n", 1)[0]
