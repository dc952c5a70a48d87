"""Runs of main.py as child processes of a command that runs many of them (cv, repeat, sweep), stopped with it."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import Any


class Stopped(Exception):
    """Ctrl+C or SIGTERM stopped the command that runs the runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def wait_for(process: subprocess.Popen, beat: Callable[[], None] | None = None, every: float = 60.0) -> int:
    """Wait for the run `process` and return its exit status, calling `beat` every `every` seconds if given (a sweep
    trial's heartbeat). A SIGTERM to this process is passed on to the run; Ctrl+C reaches it from the terminal. Either,
    once the run has ended (saving its last.ckpt), raises Stopped."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        status = None
        while status is None:
            if beat is not None:
                beat()
            try:
                status = process.wait(timeout=every if beat is not None else None)
            except subprocess.TimeoutExpired:
                continue
    except KeyboardInterrupt:
        process.wait()
        raise Stopped(signal.SIGINT) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        raise Stopped(received[0])
    return status
