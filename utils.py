"""Shared helpers: finding the class a model or dataset file defines, user-facing errors, the run directory."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A mistake the user can fix in the config or on the command line; main.py prints it without a traceback."""


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


def run_dir(trainer: Any) -> Path | None:
    """The run directory that global rank 0 writes files into (created), or None on other ranks and when there is
    none (fast_dev_run). As Lightning's `trainer.log_dir`, which must be called on every rank (it broadcasts):
    this one can be called on rank 0 alone."""
    if not trainer.is_global_zero:
        return None
    logger = trainer.logger
    path = trainer.default_root_dir if logger is None else getattr(logger, "log_dir", None) or logger.save_dir
    if not path:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)
