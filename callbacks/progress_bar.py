"""Lightning's progress bar, drawn at a steady pace instead of at every batch."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from utils import ConfigError


class ProgressBar(TQDMProgressBar):
    """The tqdm progress bar, redrawn at most every `refresh_seconds` (validation and test bars also at their end).

    Lightning's bar redraws, and reads every logged metric for it, after each batch, and redraws the training bar
    three times per epoch: for a small model that costs as much as its training steps. Counting batches
    (`refresh_rate`) cannot fit models whose steps last a millisecond and models whose steps last a second; time
    can.

    Args:
        refresh_seconds: Least time between two redraws.
        leave: Leave each epoch's finished bar on screen.
    """

    def __init__(self, refresh_seconds: float = 0.5, leave: bool = False) -> None:
        if refresh_seconds < 0:
            raise ConfigError(f"progress_bar.refresh_seconds must be >= 0, got {refresh_seconds}")
        super().__init__(leave=leave)
        self.refresh_seconds = refresh_seconds
        self._drawn = 0.0

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.refresh = _paced(bar.refresh, self.refresh_seconds)  # reset, set_description and set_postfix redraw
        return bar

    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if not self.is_enabled or (current != total and now - self._drawn < self.refresh_seconds):
            return False
        self._drawn = now
        return True


def _paced(redraw: Any, seconds: float) -> Any:
    """`redraw`, doing nothing when called again within `seconds` of its last run."""
    last = -float("inf")

    def paced(*args: Any, **kwargs: Any) -> Any:
        nonlocal last
        now = time.monotonic()
        if now - last >= seconds:
            last = now
            return redraw(*args, **kwargs)
        return None

    return paced
