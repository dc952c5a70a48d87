"""Shared helpers: finding the class a model or dataset file defines and building it, and the user-facing errors."""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import pkgutil
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A mistake the user can fix in the config or on the command line; main.py prints it without a traceback."""


class DataError(ConfigError):
    """Data that cannot be used as it is: a file that does not decode, images of different sizes, nan in the
    validation data. Its message is one line naming the file or the split.

    Raised in a DataLoader worker, it stays that line: torch rebuilds a worker's exception in the main process by
    calling its class with "Caught DataError in DataLoader worker process 0. Original Traceback ...", the
    worker's traceback ending in the original message, which is all this keeps.
    """

    def __init__(self, message: str) -> None:
        if message.startswith(f"Caught {type(self).__name__} ") and "\nOriginal Traceback" in message:
            last = message.rstrip("\n").rpartition("\n")[2]
            message = last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")
        super().__init__(message)


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """"did you mean X or Y? " for the choices closest to a misspelt `name` (ignoring case), or ""."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = [by_lower[match] for match in difflib.get_close_matches(name.lower(), by_lower, n=3)]
    return f"did you mean {' or '.join(close)}? " if close else ""


def available(package: str) -> list[str]:
    """Names selectable in `package` (`model` or `data`): its modules, less the interface and private ones."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(ROOT / package)])
        if not info.name.startswith("_") and not info.name.endswith("_interface")
    )


def find_class(package: str, name: str, base: type) -> type:
    """The `base` subclass defined in `<package>/<name>.py`.

    A file defines exactly one such class, or names the one to use first in its `__all__` when it also
    defines helpers (blocks, layers). An error raised while importing the file surfaces as itself.
    """
    if name not in available(package):
        raise ConfigError(
            f"unknown {package} {name!r}: there is no {package}/{name}.py; "
            f"{did_you_mean(name, available(package))}available: {', '.join(available(package))}"
        )
    module = importlib.import_module(f"{package}.{name}")
    exported = getattr(module, "__all__", None)
    if exported:
        cls = getattr(module, exported[0])
        if not (inspect.isclass(cls) and issubclass(cls, base)):
            raise ConfigError(f"{package}/{name}.py: __all__[0] = {exported[0]!r} is not a {base.__name__} subclass")
        return cls
    candidates = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise ConfigError(
            f"{package}/{name}.py must define one {base.__name__} subclass (found: {found}); "
            f"name the main one first in the file's __all__"
        )
    return candidates[0]


def construct(cls: type, what: str, option: str, args: dict[str, Any], **fixed: Any) -> Any:
    """`cls(**fixed, **args)` for the user's dataset or network (`what`, e.g. "dataset 'line'"), `args` being the
    values of the option `option` (data.dataset_args, model.net_args).

    A ValueError, TypeError or AssertionError from the constructor, the ways plain Python code refuses an argument,
    becomes a one-line ConfigError naming `what`, the arguments set (those that differ from the defaults) and the
    line of `cls`'s file that raised it; a ConfigError passes as it is.
    """
    try:
        return cls(**fixed, **args)
    except ConfigError:
        raise
    except (ValueError, TypeError, AssertionError) as error:
        parameters = inspect.signature(cls).parameters
        given = [
            f"--{option}.{name} {_shown(value)}"
            for name, value in args.items()
            if name not in parameters or _differs(value, parameters[name].default)
        ]
        source = inspect.getfile(cls)
        frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == source]
        reason = " ".join(str(error).split()) or (frames[-1].line if frames else "") or type(error).__name__
        file = Path(frames[-1].filename) if frames else None
        shown_file = file.relative_to(ROOT) if file and file.is_relative_to(ROOT) else file
        where = f" ({shown_file}:{frames[-1].lineno})" if frames else ""
        verb = f"refused {', '.join(given)}" if given else "failed with its default arguments"
        raise ConfigError(f"{what} {verb}: {reason}{where}") from error


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # a default that compares elementwise (an array, a tensor)
        return True


def _shown(value: Any, limit: int = 60) -> str:
    """`value` as it is written on the command line, cut short."""
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
