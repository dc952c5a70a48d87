"""A PostgreSQL server of a test's own: the binaries of the `pgserver` wheel (requirements-dev.txt), a new database
cluster in a temporary folder, on a free port of 127.0.0.1, stopped and deleted at the end.

PostgreSQL refuses to run as root; as root (a container, CI), the server runs as the unprivileged user `nobody`,
which owns its folder. pgserver's own `get_server` would instead add a system user and open up every folder above
its data: this runs the binaries directly."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

UNPRIVILEGED_USER = "nobody"


def binaries() -> Path:
    """The folder of the PostgreSQL programs that the pgserver wheel holds (found without importing it)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("pgserver is not installed: pip install -r requirements-dev.txt")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _as_unprivileged(folder: Path) -> Callable[[], None] | None:
    """Under root, give `folder` to UNPRIVILEGED_USER and return what makes a new process that user; else None."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pytest.skip(f"running as root, and there is no user {UNPRIVILEGED_USER!r} to run PostgreSQL as")
    os.chown(folder, user.pw_uid, user.pw_gid)

    def demote() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def postgres_server(timeout: float = 60) -> Iterator[str]:
    """Start a server and yield its URL (user postgres, no password: the cluster trusts local connections)."""
    folder = Path(tempfile.mkdtemp(prefix="test-postgres-"))  # not tmp_path: root's pytest folder is closed to others
    demote = _as_unprivileged(folder)
    data, log = folder / "data", folder / "server.log"
    programs = binaries()
    server = None
    try:
        subprocess.run(
            [programs / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"],
            preexec_fn=demote,
            check=True,
            capture_output=True,
        )
        port = _free_port()
        with log.open("wb") as output:
            server = subprocess.Popen(
                [programs / "postgres", "-D", data, "-p", str(port), "-k", folder, "-c", "listen_addresses=127.0.0.1"],
                preexec_fn=demote,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while subprocess.run(
            [programs / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(folder, ignore_errors=True)
