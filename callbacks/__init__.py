"""Callbacks of this template; add one to a run with `trainer.callbacks` in a config or `--trainer.callbacks+=NAME`."""

from callbacks.checkpointing import AtomicCheckpointIO, FiniteLossGuard, ResumableCheckpoint, TrainingDiverged
from callbacks.classification_figures import ClassificationFigures
from callbacks.gpu_memory import GPUMemoryFraction
from callbacks.plot_predictions import PlotPredictions
from callbacks.progress_bar import ProgressBar
from callbacks.training_summary import TrainingSummary

__all__ = [
    "AtomicCheckpointIO",
    "ClassificationFigures",
    "FiniteLossGuard",
    "GPUMemoryFraction",
    "PlotPredictions",
    "ProgressBar",
    "ResumableCheckpoint",
    "TrainingDiverged",
    "TrainingSummary",
]
