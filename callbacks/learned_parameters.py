"""The straight-line regression's payoff: the parameters a tiny network learned, beside those the data was made with."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from callbacks._console import print_line
from callbacks.results import record


class LearnedParameters(Callback):
    """For a network of at most `max_values` parameter values, prints each parameter learned, such as
    "learned weight: 0.7001  (true: 0.7)", and records them in results.json as `parameters`; the true values, as
    `true_parameters`, are the dataset's float attributes of the same names (the straight-line regression's
    `weight` and `bias`). At the end of a fit (the network trained) and of each validate, test and predict run (the
    network evaluated: after fit, the best checkpoint); values just printed are not printed again.

    Args:
        max_values: Networks with more parameter values than this are left out.
    """

    def __init__(self, max_values: int = 16) -> None:
        self.max_values = max_values
        self._shown: list[str] = []  # the lines printed last

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not called for the trial steps of the Tuner's finders, whose fit ends early.
        self._report(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called once a validate, test or predict run has finished (not when it failed), after its table is printed.
        if stage != "fit":
            self._report(trainer, pl_module)

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        if not trainer.is_global_zero or sum(p.numel() for p in net.parameters()) > self.max_values:
            return
        learned = {name: p.detach().cpu() for name, p in net.named_parameters()}
        dataset = getattr(trainer.datamodule, "dataset", None)
        true = {name: getattr(dataset, name) for name in learned if isinstance(getattr(dataset, name, None), float)}
        lines = [
            f"learned {name}: {', '.join(f'{v:.4f}' for v in value.flatten().tolist())}"
            + (f"  (true: {true[name]})" if name in true else "")
            for name, value in learned.items()
        ]
        if lines != self._shown:
            for line in lines:
                print_line(trainer, line)
            self._shown = lines
        results: dict[str, Any] = {"parameters": {name: value.tolist() for name, value in learned.items()}}
        if true:
            results["true_parameters"] = true
        record(trainer, results)
