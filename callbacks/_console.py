"""Printing from callbacks without breaking the progress bar."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def print_line(trainer: pl.Trainer, line: str) -> None:
    """Print `line` on global rank zero, through the progress bar when there is one, so that the bar stays intact."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is None or not getattr(bar, "is_enabled", True):
        print(line)
    elif isinstance(bar, TQDMProgressBar):
        Tqdm.write(line)  # its print() drops the line while no bar is shown, as at the start of training
    else:
        bar.print(line)
