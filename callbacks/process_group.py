"""The end of a process's distributed process group, before Python shuts down."""

from __future__ import annotations

import atexit

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class ProcessGroupTeardown(Callback):
    """Destroys the process group of each process of a multi-process run (ddp, ddp_spawn) as the process exits, while
    Python still runs: torch asks every process to call `destroy_process_group` at its end, and Lightning does so for
    NCCL only.

    Without it a gloo group lives on into Python's shutdown. Its worker thread can still hold the last collective's
    tensors then (a loaded machine may not have run it since); freeing them takes the GIL, which a shutting-down
    interpreter answers by ending the thread, and the process aborts with "terminate called without an active
    exception": a run that trained and tested fails. Destroyed here, the group's threads finish and are joined first.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.unregister(destroy_process_group)  # once per process, whichever stages it runs
            atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    """Destroy the default process group, if any; freed, it joins its threads, which finish their work first."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
