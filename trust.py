"""What a config file, a command-line value or a checkpoint may hold: plain values and tensors, never code.

Each is read as if a stranger wrote it, by guards that do not rely on one another:

- jsonargparse's policy, set for the whole process when this module is imported (the interfaces import it, so it
  also holds for `MInterface.load_from_checkpoint` in any script): a `{class_path: ...}` given where any value is
  accepted (the `*_args` dicts, untyped constructor arguments) is never built, and an import path given as a value
  (a class_path, a callable, a type) is refused, unimported, unless it lies in a trusted package (`trusted_imports`).
- `check_config` and `check_plain`: a class_path where a plain value is expected is an error naming the key, before
  anything is built.
- `load_checkpoint` and `load_yaml`, the only ways this project reads a checkpoint (weights-only unpickling, after
  a look at what the pickle would call; then `check_checkpoint`) and YAML (the safe loader, for the parser's values
  too); both refuse values nested too deep, or repeated into billions by YAML aliases or shared pickle references
  (a "billion laughs").
"""

from __future__ import annotations

import itertools
import pickle
import pickletools
import pkgutil
import zipfile
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
TRUSTED_PACKAGES = (
    "lightning",
    "torch.nn",
    "torch.distributed.algorithms.ddp_comm_hooks",
    "torchmetrics",
    "torchvision.transforms",
)
# No config, checkpoint hyperparameters or command-line value of this project comes near these sizes; a "billion
# laughs" of a few hundred bytes passes them at once, and is refused before anything else walks it.
MAX_VALUES = 100_000
MAX_CHECKPOINT_VALUES = 1_000_000  # all of a checkpoint but its tensors: optimizer state, loops, callbacks...
MAX_DEPTH = 64
MAX_INT_BITS = 64  # Python would take minutes to read a longer base-60 YAML number, and refuses to print one
MAX_YAML_CHARACTERS = 128 * 1024  # a config is a few kilobytes
# What a checkpoint's pickle may call: OrderedDict, tensors and parameters over the storages the archive holds, and
# plain values. Each builds no more memory than the file brings.
PICKLE_CALLS = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "torch.device",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "_codecs.encode",
}
# What a checkpoint callback's state names files by: Lightning deletes some of them as training goes on.
CHECKPOINT_PATH_KEYS = ("dirpath", "best_model_path", "last_model_path", "kth_best_model_path")
# What LightningCLI records in hyperparameters, and the only instantiator a checkpoint of this template may name.
INSTANTIATOR_KEY, INSTANTIATOR = "_instantiator", "lightning.pytorch.cli.instantiate_module"
HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")
# The checkpoint files this process has accepted (see `_file_key`): one command reads the same file several times
# (the model's name, its hyperparameters, the trainer's load), and checks it once.
_ACCEPTED: set[tuple[Any, ...]] = set()


def trusted_imports() -> list[str]:
    """`TRUSTED_PACKAGES`, and every package and module of this project but this one, which sets the policy."""
    own = [module.name for module in pkgutil.iter_modules([str(ROOT)]) if module.name != __name__]
    return [*TRUSTED_PACKAGES, *own]


def _short(value: Any, limit: int) -> bool:
    """Whether `value` is a number or string that `shown` can write in full within `limit` characters."""
    if isinstance(value, int):
        return value.bit_length() <= MAX_INT_BITS
    return isinstance(value, float) or (isinstance(value, str) and len(value) <= limit)


def shown(value: Any, limit: int = 80) -> str:
    """`value` for an error message, cut short: a long or large value from a hostile file must not flood the
    terminal (or take minutes to print)."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return f"a number of {value.bit_length()} bits"
    if isinstance(value, (str, int, float, bool, type(None))):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}..."
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(_short(v, limit) for v in value):
        text = repr(list(value))  # as the command line writes it
        return text if len(text) <= limit else f"{text[:limit]}..."
    return f"a {type(value).__name__}"


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
        if isinstance(item, int) and item.bit_length() > MAX_INT_BITS:
            raise ConfigError(f"{where.rstrip(':')}: {shown(item)}, more than any setting takes: refused")
        if isinstance(item, (Mapping, Namespace)):
            items = item.items() if isinstance(item, Mapping) else vars(item).items()
            if isinstance(item, refuse_specs_in) and "class_path" in item:
                raise ConfigError(
                    f"{where.rstrip(':')}: a class_path ({shown(item['class_path'])}) where a plain value is expected; "
                    "only options typed as classes (trainer.callbacks, trainer.logger, trainer.plugins...) build "
                    "classes"
                )
            children = [(f"{where} {k}" if where.endswith(":") else f"{where}.{k}", v) for k, v in items]
        elif isinstance(item, (list, tuple)):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        else:
            continue
        stack.extend((child, v, depth + 1) for child, v in reversed(children))


def check_checkpoint(checkpoint: Any, where: str, *, weights_alone: bool = False) -> None:
    """Raise a ConfigError unless `checkpoint` is one this template could have written: a Lightning checkpoint of
    bounded size whose hyperparameters are plain values and name no code to run, and whose checkpoint callbacks name
    local files inside their folders; with `weights_alone`, also a bare state_dict (names to tensors)."""
    if weights_alone and isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return
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
            named = shown(hparams.get("_class_path", instantiator))
            raise ConfigError(f"{where}: its {name} name code to run ({named}), which this template never writes")
        check_plain(hparams, f"{where}: {name}")
    callbacks = checkpoint.get("callbacks") or {}
    for name, state in callbacks.items() if isinstance(callbacks, dict) else ():
        if isinstance(state, dict):
            paths = [state.get(key) for key in CHECKPOINT_PATH_KEYS] + list(state.get("best_k_models") or {})
            for path in paths:
                _check_checkpoint_file_name(path, f"{where}: the state of callback {name}")


def _check_checkpoint_file_name(path: Any, where: str) -> None:
    """Refuse a file name that Lightning could be led to read remotely, or to delete outside the checkpoint folder:
    a URL, or a path that climbs out of a folder it has entered (`runs/x/../../elsewhere`)."""
    if path is None or path == "":
        return
    if not isinstance(path, str) or "://" in path:
        raise ConfigError(f"{where} names {shown(path)}, not a local file name: refused")
    if ".." in itertools.dropwhile(lambda part: part == "..", Path(path).parts):  # `../runs/...` climbs no folder
        raise ConfigError(f"{where} names {shown(path)}, which climbs out of its folder: refused")


def check_checkpoint_file(path: str | Path, option: str = "--ckpt_path") -> None:
    """Raise a ConfigError unless `load_checkpoint` accepts the file; one it accepted before, unchanged since, is not
    read again."""
    if _file_key(path, weights_alone=False) not in _ACCEPTED:
        load_checkpoint(path, option)


def load_checkpoint(path: str | Path, option: str = "--ckpt_path", *, weights_alone: bool = False) -> dict[str, Any]:
    """The checkpoint file at `path`, read with weights-only unpickling (plain data and tensors, never code) and
    accepted by `check_checkpoint` (`weights_alone` as there). Errors name the file as `option path`."""
    where = f"{option} {path}"
    if "://" in str(path):
        raise ConfigError(f"{where}: checkpoints are read from local files only; download it first")
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise ConfigError(f"{where}: no such file")
    key = _file_key(path, weights_alone)
    if key not in _ACCEPTED:
        _check_archive(path, where)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{where}: refused, it does not load with weights-only unpickling (it may hold code); "
            "only load checkpoints you trust"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, RecursionError, MemoryError) as error:
        raise ConfigError(f"{where}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if key not in _ACCEPTED:
        check_checkpoint(checkpoint, where, weights_alone=weights_alone)
        _ACCEPTED.add(key)
    return checkpoint


def _file_key(path: str | Path, weights_alone: bool) -> tuple[Any, ...]:
    """What identifies a file's contents for `_ACCEPTED`: its path, size and modification time."""
    try:
        stat = Path(path).stat()
    except (OSError, TypeError, ValueError):
        return (path,)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, weights_alone


def _check_archive(path: str | Path, where: str) -> None:
    """Refuse, before unpickling, a checkpoint that is not the uncompressed zip archive `torch.save` writes, or
    whose pickle calls anything but `PICKLE_CALLS`. Weights-only unpickling allows more (`bytearray`, storage and
    legacy tensor types, tensor conversions), and those build memory from a number alone: a file of a few kilobytes
    could take all the memory. The calls are read off the pickle's opcodes (`pickle_calls`); nothing runs."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if any(member.compress_type != zipfile.ZIP_STORED for member in members):
                raise ConfigError(f"{where}: refused, torch.save never compresses what it writes")
            pickles = [archive.read(m) for m in members if m.filename.rsplit("/", 1)[-1] == "data.pkl"]
    except zipfile.BadZipFile as error:
        with open(path, "rb") as file:
            pickled = file.read(1) == pickle.PROTO
        if not pickled:  # empty, truncated, or no checkpoint at all
            raise ConfigError(f"{where}: not a readable checkpoint ({error})") from error
        raise ConfigError(
            f"{where}: refused, it is not the zip archive that torch.save writes but a bare pickle (an older or "
            "foreign format, which may hold code); only load checkpoints you trust"
        ) from error
    for data in pickles:
        try:
            refused = sorted(pickle_calls(data) - PICKLE_CALLS)
        except ValueError as error:
            raise ConfigError(f"{where}: not a readable checkpoint ({error})") from error
        if refused:
            names = ", ".join(name[:60] for name in refused[:3])
            raise ConfigError(
                f"{where}: refused, it does not load with weights-only unpickling: it calls {names}, where a "
                "checkpoint builds only tensors, dicts and plain values (anything else may run code or take all the "
                "memory); only load checkpoints you trust"
            )


def pickle_calls(data: bytes) -> set[str]:
    """What the pickle `data` calls when unpickled (REDUCE, NEWOBJ...), as `module.name`; `?` for a callable that
    is no global. Read off the opcodes with a stack of placeholders, as `pickletools` describes each opcode; raises
    ValueError for a malformed pickle."""
    mark = object()
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    calls: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            before = op.stack_before
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
                continue
            if pickletools.markobject in before:  # what lies above the topmost mark, and what lies below it
                at_mark = len(stack) - 1 - stack[::-1].index(mark)
                start = at_mark - before.index(pickletools.markobject)
                popped = stack[start:at_mark] + stack[at_mark + 1 :]
            else:
                start = len(stack) - len(before)
                popped = stack[start:]
            if start < 0:
                raise ValueError(f"{op.name} finds too few values on the stack")
            del stack[start:]
            if op.name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ"):
                calls.add(popped[0] if isinstance(popped[0], str) else "?")
            elif op.name == "INST":
                calls.add(_global_name(arg))
            if op.name == "GLOBAL":
                stack.append(_global_name(arg))
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            else:
                stack.extend(mark if item is pickletools.markobject else None for item in op.stack_after)
    except (IndexError, KeyError) as error:
        raise ValueError(f"{type(error).__name__}: {error}") from error
    return calls


def _global_name(arg: str) -> str:
    """`module.name` for a GLOBAL's argument `module name`, with Python 2's name for builtins mapped as pickle does."""
    module, _, name = arg.partition(" ")
    return f"{'builtins' if module == '__builtin__' else module}.{name}"


def checked_load_arguments(
    checkpoint_path: str | Path, hparams_file: str | Path | None, weights_only: bool | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The keyword arguments for Lightning's `load_from_checkpoint`, once the file is accepted by `load_checkpoint`:
    `kwargs`, over the values of `hparams_file` read by `load_yaml_file` (Lightning would read it with PyYAML's
    full loader)."""
    if weights_only is False:
        raise ConfigError("checkpoints of this template load with weights-only unpickling only: drop weights_only")
    check_checkpoint_file(checkpoint_path, option="checkpoint")
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
    if len(text) > MAX_YAML_CHARACTERS:
        raise ConfigError(f"{where}: more than {MAX_YAML_CHARACTERS:,} characters of YAML, for a few settings: refused")
    try:
        value = _PARSER_YAML_LOADER(text)
    except yaml.reader.ReaderError as error:  # a character no YAML text holds, as binary files do
        raise ConfigError(
            f"{where} is not YAML text: it holds the control character #x{error.character:02x} at position "
            f"{error.position} (a binary file?); give a YAML file"
        ) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{at}: {getattr(error, 'problem', error)}") from error
    except RecursionError as error:
        raise ConfigError(f"{where}: nested too deeply to read: refused") from error
    except ValueError as error:  # a number Python will not read, such as one of more than 4300 digits
        raise ConfigError(f"{where} is not valid YAML: {error}") from error
    check_size(value, f"{where}:")
    return value


def load_yaml_file(path: str | Path) -> Any:
    """The YAML file at `path`, as `load_yaml` reads it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not YAML text: its byte {error.start} (0x{error.object[error.start]:02x}) is not UTF-8 text "
            "(a binary file?); give a YAML file"
        ) from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read as a YAML file ({error})") from error
    return load_yaml(text, str(path))


_PARSER_YAML_LOADER = get_loader("yaml")
set_parsing_settings(
    instantiate_subclass_spec_in_any=False,
    import_path_denylist=["*"],
    import_path_allowlist=trusted_imports(),
)
set_loader("yaml", lambda text: load_yaml(text, "a YAML value or file"), (yaml.YAMLError,))
