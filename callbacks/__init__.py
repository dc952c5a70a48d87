"""Callbacks of this template; add one to a run with `trainer.callbacks` in a config or `--trainer.callbacks+=NAME`."""

from callbacks.checkpointing import AtomicCheckpointIO, FiniteLossGuard, ResumableCheckpoint, TrainingDiverged
from callbacks.classification_figures import ClassificationFigures
from callbacks.gpu_memory import GPUMemoryFraction
from callbacks.learned_parameters import LearnedParameters
from callbacks.plot_predictions import PlotPredictions
from callbacks.predictions_writer import PredictionsWriter
from callbacks.process_group import ProcessGroupTeardown
from callbacks.progress_bar import ProgressBar
from callbacks.results import RunResults
from callbacks.training_summary import TrainingSummary

__all__ = [
    "AtomicCheckpointIO",
    "ClassificationFigures",
    "FiniteLossGuard",
    "GPUMemoryFraction",
    "LearnedParameters",
    "PlotPredictions",
    "PredictionsWriter",
    "ProcessGroupTeardown",
    "ProgressBar",
    "ResumableCheckpoint",
    "RunResults",
    "TrainingDiverged",
    "TrainingSummary",
]
