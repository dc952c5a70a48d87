"""Shared fixtures: running main.py in a subprocess, in a scratch directory, as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Run:
    """One finished `python main.py ...` command."""

    def __init__(self, proc: subprocess.CompletedProcess, cwd: Path) -> None:
        self.returncode, self.stdout, self.stderr, self.cwd = proc.returncode, proc.stdout, proc.stderr, cwd

    @property
    def run_dir(self) -> Path:
        """The run directory the command announced on its last line."""
        line = [ln for ln in self.stdout.splitlines() if ln.startswith("Run written to ")][-1]
        return self.cwd / line.removeprefix("Run written to ")

    @property
    def results(self) -> dict:
        return json.loads((self.run_dir / "results.json").read_text())


def run_main(*args: str, cwd: Path, root: Path = ROOT) -> Run:
    """Run `root/main.py` with `args` from `cwd`, so that runs/ lands there."""
    proc = subprocess.run(
        [sys.executable, str(root / "main.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Run(proc, cwd)


@pytest.fixture(scope="session")
def line_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The README's first command, `python main.py --model linear`, run once for several tests."""
    run = run_main("--model", "linear", cwd=tmp_path_factory.mktemp("line"))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the project that a test may add files to, as a user adapting the template would."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("runs", ".git", "__pycache__", ".venv", "*.egg-info"))
    return copy
