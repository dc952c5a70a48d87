"""What a config file, a command-line value or a checkpoint may hold: plain values and tensors, never code.

Each is read as if a stranger wrote it, by guards that do not rely on one another:

- jsonargparse's policy, set for the whole process when this module is imported (the interfaces import it, so it
  also holds for `MInterface.load_from_checkpoint` in any script): a `{class_path: ...}` given where any value is
  accepted (the `*_args` dicts, untyped constructor arguments) is never built, and an import path given as a value
  (a class_path, a callable, a type) is refused, unimported, unless it lies in a trusted package (`trusted_imports`).
- `check_config` and `check_plain`: a class_path where a plain value is expected is an error naming the key, before
  anything is built.
- `load_checkpoint` and `load_yaml`, the only ways this project reads a checkpoint (weights-only unpickling) and
  YAML (the safe loader, for the parser's values too); both refuse values nested too deep, or repeated into
  billions by YAML aliases or shared pickle references (a "billion laughs").
"""

from __future__ import annotations

import pickle
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace, get_loader, set_loader, set_parsing_settings

from utils import ROOT, ConfigError

# Packages outside this project whose classes, functions and types a config may name by import path, in options
# typed as classes (`trainer.callbacks`, `trainer.logger`, a model argument typed `type[nn.Module]`...). The project's
# own packages and modules are trusted as well. Add an installed package here to use its classes from a config.
TRUSTED_PACKAGES = ("lightning", "torch.nn", "torchmetrics", "torchvision.transforms")
# No config, checkpoint hyperparameters or command-line value of this project comes near these sizes; a "billion
# laughs" of a few hundred bytes passes them at once, and is refused before anything else walks it.
MAX_VALUES = 100_000
MAX_CHECKPOINT_VALUES = 1_000_000  # all of a checkpoint but its tensors: optimizer state, loops, callbacks...
MAX_DEPTH = 64
# What LightningCLI records in hyperparameters, and the only instantiator a checkpoint of this template may name.
INSTANTIATOR_KEY, INSTANTIATOR = "_instantiator", "lightning.pytorch.cli.instantiate_module"
HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def trusted_imports() -> list[str]:
    """`TRUSTED_PACKAGES`, and every package and module of this project but this one, which sets the policy."""
    own = [module.name for module in pkgutil.iter_modules([str(ROOT)]) if module.name != __name__]
    return [*TRUSTED_PACKAGES, *own]


def check_plain(value: Any, key: str, *, limit: int = MAX_VALUES) -> None:
    """Raise a ConfigError naming the key if `value`, meant to be plain values (numbers, strings, lists, dicts),
    holds a class spec (a `{class_path: ...}`, parsed or not), or is too deep or too large (see `check_size`).

    `key` names `value` in messages: an option (`model.loss_args`), or a file followed by a colon (`config.yaml:`).
    """
    _walk(value, key, limit, refuse_specs_in=(Mapping, Namespace))


def check_config(config: Namespace) -> None:
    """`check_plain` for a config as jsonargparse parsed it, where class specs belong in options typed as classes:
    jsonargparse has made those a `Namespace`, and left a class_path given where a plain value is expected, or one
    it may not import, as the dict it was given."""
    for key, value in vars(config).items():
        _walk(value, key, MAX_VALUES, refuse_specs_in=(Mapping,))


def check_size(value: Any, key: str, *, limit: int = MAX_VALUES) -> None:
    """Raise a ConfigError if `value` nests deeper than `MAX_DEPTH`, or holds more than `limit` values once shared
    references (YAML aliases, pickle memos) are counted each time they occur; tensors count as one value."""
    _walk(value, key, limit, refuse_specs_in=())


def _walk(value: Any, key: str, limit: int, refuse_specs_in: tuple[type, ...]) -> None:
    stack = [(key, value, 0)]
    count = 0
    while stack:
        where, item, depth = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(
                f"{key.rstrip(':')}: more than {limit:,} values once its aliases or shared references are expanded "
                "(a 'billion laughs'?): refused"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"{key.rstrip(':')}: nested more than {MAX_DEPTH} levels deep: refused")
        if isinstance(item, (Mapping, Namespace)):
            items = item.items() if isinstance(item, Mapping) else vars(item).items()
            if isinstance(item, refuse_specs_in) and "class_path" in item:
                raise ConfigError(
                    f"{where.rstrip(':')}: a class_path ({item['class_path']!r}) where a plain value is expected; "
                    "only options typed as classes (trainer.callbacks, trainer.logger, trainer.plugins...) build "
                    "classes"
                )
            children = [(f"{where} {k}" if where.endswith(":") else f"{where}.{k}", v) for k, v in items]
        elif isinstance(item, (list, tuple)):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend((child, v, depth + 1) for child, v in reversed(children))


def check_checkpoint(checkpoint: Any, where: str) -> None:
    """Raise a ConfigError unless `checkpoint` is one this template could have written: a Lightning checkpoint of
    bounded size whose hyperparameters are plain values and name no code to run."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{where}: not a Lightning checkpoint (it has no state_dict)")
    check_size(checkpoint, f"{where}:", limit=MAX_CHECKPOINT_VALUES)
    for name in HPARAMS_KEYS:
        hparams = checkpoint.get(name)
        if hparams is None:
            continue
        if not isinstance(hparams, dict):
            raise ConfigError(f"{where}: its {name} are not a dict of values")
        instantiator = hparams.get(INSTANTIATOR_KEY, INSTANTIATOR)
        if instantiator != INSTANTIATOR or "_class_path" in hparams:
            named = hparams.get("_class_path", instantiator)
            raise ConfigError(f"{where}: its {name} name code to run ({named!r}), which this template never writes")
        check_plain(hparams, f"{where}: {name}")


def load_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict[str, Any]:
    """The checkpoint file at `path`, read with weights-only unpickling (plain data and tensors, never code) and
    accepted by `check_checkpoint`. Errors name the file as `option path`."""
    where = f"{option} {path}"
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{where}: refused, it does not load with weights-only unpickling (it may hold code); "
            "only load checkpoints you trust"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, RecursionError) as error:
        raise ConfigError(f"{where}: not a readable checkpoint ({error})") from error
    check_checkpoint(checkpoint, where)
    return checkpoint


def checked_load_arguments(
    checkpoint_path: str | Path, hparams_file: str | Path | None, weights_only: bool | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments for Lightning's `load_from_checkpoint`, once the file is accepted by `load_checkpoint`:
    `kwargs`, over the values of `hparams_file` read by `load_yaml_file` (Lightning would read it with PyYAML's
    full loader)."""
    if weights_only is False:
        raise ConfigError("checkpoints of this template load with weights-only unpickling only: drop weights_only")
    load_checkpoint(checkpoint_path, option="checkpoint")
    if hparams_file is None:
        return kwargs
    values = load_yaml_file(hparams_file)
    if not isinstance(values, dict):
        raise ConfigError(f"{hparams_file}: not a mapping of hyperparameters")
    check_plain(values, f"{hparams_file}:")
    return {**values, **kwargs}


def load_yaml(text: str, where: str) -> Any:
    """`text` read as the parser reads YAML (PyYAML's safe loader) and accepted by `check_size`. Errors name
    `where`, with the line for bad YAML."""
    try:
        value = _PARSER_YAML_LOADER(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{at}: {getattr(error, 'problem', error)}") from error
    except RecursionError as error:
        raise ConfigError(f"{where}: nested too deeply to read: refused") from error
    check_size(value, f"{where}:")
    return value


def load_yaml_file(path: str | Path) -> Any:
    """The YAML file at `path`, as `load_yaml` reads it."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read as a YAML file ({error})") from error
    return load_yaml(text, str(path))


_PARSER_YAML_LOADER = get_loader("yaml")
set_parsing_settings(
    instantiate_subclass_spec_in_any=False,
    import_path_denylist=["*"],
    import_path_allowlist=trusted_imports(),
)
set_loader("yaml", lambda text: load_yaml(text, "the value"), (yaml.YAMLError,))
