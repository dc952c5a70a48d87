"""Callbacks of this template; add one to a run with `trainer.callbacks` in a config or `--trainer.callbacks+=NAME`."""

from callbacks.classification_figures import ClassificationFigures
from callbacks.plot_predictions import PlotPredictions

__all__ = ["ClassificationFigures", "PlotPredictions"]
