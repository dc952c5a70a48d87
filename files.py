"""Writing files: the run directory, files written whole or not at all, and one clear error naming the path when
the place refuses a write (a full disk, a read-only folder, a file where a folder should be)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from utils import ConfigError


class WriteError(ConfigError):
    """A file or folder that could not be written: a full disk, a read-only place, a file where a folder should be.
    Its message names the path and the system's reason."""


# The system's reasons for refusing a write that lie with the place written, not with the program.
PLACE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    }
)


def run_dir(trainer: Any) -> Path | None:
    """The run directory that global rank 0 writes files into (created), or None on other ranks and under
    fast_dev_run. It is the first logger's `log_dir` (TensorBoard's and CSV's save_dir/name/version_N); for a logger
    without one (MLflow, W&B), the folder that Lightning saves the run's checkpoints in, less `checkpoints`:
    save_dir/name/version (for MLflow with a local store, its run's own folder); with no logger, default_root_dir.
    Lightning's `trainer.log_dir` must be called on every rank (it broadcasts) and gives an MLflow or W&B logger's
    save_dir, which all its runs share: this one can be called on rank 0 alone."""
    if not trainer.is_global_zero or trainer.fast_dev_run:
        return None
    logger = trainer.logger
    if logger is None:
        path = Path(trainer.default_root_dir)
    elif getattr(logger, "log_dir", None):
        path = Path(logger.log_dir)
    elif logger.version is None:  # a run that has not begun yet (W&B's, before its experiment starts)
        return None
    else:
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        path = Path(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    make_dir(path)
    return path


def make_dir(path: Path) -> None:
    """Create the folder `path` and its parents, or raise a WriteError naming it and why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if (refused := write_error("create the folder", path, error)) is None:
            raise
        raise refused from error


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` whole or not at all: `write` fills a temporary file beside it (`<name>.tmp-<pid>`, on the same
    filesystem), which is fsynced and renamed onto `path`, so that a crash, a Ctrl+C or a full disk mid-write leaves
    what `path` held intact. Raises a WriteError naming `path` when the place refuses the write."""
    make_dir(path.parent)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if (refused := write_error("write", path, error)) is None:
            raise
        raise refused from error
    _fsync_directory(path.parent)


def remove_stale_temporaries(folder: Path, pattern: str) -> list[Path]:
    """Delete the temporary files `<pattern>.tmp-<pid>` of `write_atomically` that writes cut short by a crash left
    in `folder`: those of processes no longer running on this machine (a running one's may be a write under way).
    Returns the files deleted. Nothing is deleted on Windows, where asking after a process would end it."""
    removed = []
    for temporary in folder.glob(f"{pattern}.tmp-*") if os.name != "nt" else ():
        pid = temporary.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not process_running(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # another process removed it first
                temporary.unlink()
                removed.append(temporary)
    return removed


def process_running(pid: int) -> bool:
    """Whether a process of this machine has the id `pid` (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_error(action: str, path: str | Path | None, error: BaseException) -> WriteError | None:
    """A WriteError "cannot <action> <path>: <reason>" when `error` is the place refusing a write (see
    `PLACE_ERRNOS`), else None; `path` None names the file the system names. `error` may be that OSError, or the
    RuntimeError ("unexpected pos") that torch raises while handling one, as `torch.save` does on a full disk."""
    for cause in (error, error.__context__ if isinstance(error, RuntimeError) else None):
        if isinstance(cause, OSError) and cause.errno in PLACE_ERRNOS:
            name = path if path is not None else cause.filename
            where = f" {name}" if name is not None else ""
            return WriteError(f"cannot {action}{where}: {_failure_reason(cause, cause.filename or name or '')}")
    return None


def _failure_reason(error: OSError, path: str | Path) -> str:
    """The system's reason for `error` about `path`, in words; for a file standing where a folder should be, which."""
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        in_the_way = next((p for p in (Path(path), *Path(path).parents) if p.is_file()), None)
        if in_the_way == Path(path):
            return "a file of that name is in the way"
        if in_the_way is not None:
            return f"{in_the_way} is a file, not a folder"
    return os.strerror(error.errno)


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable; not possible everywhere (Windows cannot open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
