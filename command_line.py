"""One pass over the command line, before LightningCLI parses it: the default subcommand, the `--model NAME` and
`--data NAME` shorthands, the short aliases, and which model and dataset the run uses.

The full parser needs the model's and dataset's names first, to add their constructor arguments as
`--model.net_args.*` and `--data.dataset_args.*`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.data_interface import DInterface
from model.model_interface import MInterface
from trust import load_checkpoint, load_yaml_file
from utils import ROOT, ConfigError, available, did_you_mean

# Lightning's learning-rate and batch-size finders run as subcommands too (see finders.py).
SUBCOMMANDS = ("fit", "validate", "test", "predict", "lr_find", "scale_batch_size")
# Handled by main.py before LightningCLI.
OWN_COMMANDS = ("env", "export", "cv", "repeat", "aggregate")
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
    """A command line as LightningCLI takes it, and the model and dataset it selects."""

    argv: list[str]
    model: str
    data: str


def read_command_line(argv: list[str]) -> CommandLine:
    """Insert the default `fit` subcommand, expand the shorthands and aliases, and find the model and dataset.

    `--model NAME` means `configs/NAME.yaml` when that exists (placed first, so that every other option overrides
    it), plus `model/NAME.py` when that exists (so an experiment config like `configs/resnet.yaml` is selected by
    its name); `--data NAME` likewise. Later settings win, as in the parser itself. A checkpoint given with
    `--ckpt_path` names the model (LightningCLI applies its hyperparameters last); a different model chosen on the
    command line is an error. Idempotent, because DDP re-launches this script with the rewritten `sys.argv`.
    """
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        commands = [*SUBCOMMANDS, *OWN_COMMANDS]
        raise ConfigError(
            f"unknown subcommand {argv[0]!r}: {did_you_mean(argv[0], commands)}use one of {', '.join(commands)} "
            "(or none, for fit)"
        )
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["fit", *argv]
    names: dict[str, str] = {
        "model": inspect.signature(MInterface).parameters["net"].default,
        "data": inspect.signature(DInterface).parameters["dataset"].default,
    }
    configs: list[str] = []  # the configs that shorthands select, read before the rest
    rest: list[str] = []
    from_configs: dict[str, str] = {}
    from_rest: dict[str, str] = {}
    chosen, held = None, None  # the model named on the command line, and the one the checkpoint holds
    tokens = iter(argv[1:])
    for token in tokens:
        key, eq, value = token.partition("=")
        key = ALIASES.get(key, key)
        if key in SHORTHANDS or key in SHORTHANDS.values() or key in ("-c", "--config", "--ckpt_path"):
            value = value if eq else next(tokens, "")
        group = key[2:].split(".")[0]
        if key in SHORTHANDS and value and not _is_file_name(value):
            config = ROOT / "configs" / f"{value}.yaml"
            if config.is_file():
                configs += ["--config", str(config)]
                found = _names_in(load_yaml_file(config))
                from_configs.update(found)
                chosen = found.get("model") or chosen
            if not config.is_file() or value in available(group):
                rest += [SHORTHANDS[key], value]
                from_rest[group] = value
                chosen = value if group == "model" else chosen
            continue
        if key in SHORTHANDS.values():
            from_rest[group] = value
            chosen = value if group == "model" else chosen
        elif key in ("-c", "--config") and Path(value).is_file():
            config = load_yaml_file(value)
            found = _names_in(config)
            from_rest.update(found)
            chosen = found.get("model") or chosen
            ckpt_path = config.get("ckpt_path") if isinstance(config, dict) else None
            if isinstance(ckpt_path, str) and Path(ckpt_path).is_file():
                held = _name(load_checkpoint(ckpt_path).get("hyper_parameters"), "model")
        elif key in SHORTHANDS and Path(value).is_file():  # a sub-config of the model or the data
            name = _name(load_yaml_file(value), group)
            if name:
                from_rest[group] = name
                chosen = name if group == "model" else chosen
        elif key == "--ckpt_path" and Path(value).is_file():
            held = _name(load_checkpoint(value).get("hyper_parameters"), "model")
        if key in SHORTHANDS or key in SHORTHANDS.values() or key in ("-c", "--config", "--ckpt_path"):
            rest += [key + eq + value] if eq else [key, value] if value else [key]
        else:
            rest.append(key + eq + value)
    names.update(from_configs)
    names.update(from_rest)
    if held and chosen and held != chosen:
        raise ConfigError(
            f"--ckpt_path holds a checkpoint of model {held!r}, not {chosen!r}: give a checkpoint of "
            f"{chosen!r}, or leave the model out to use {held!r}"
        )
    return CommandLine(argv[:1] + configs + rest, held or names["model"], names["data"])


def _is_file_name(value: str) -> bool:
    return value.endswith((".yaml", ".yml", ".json")) or Path(value).is_file()


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
