"""The pretraining engine, one concern per module; here, what the pipeline and a notebook use:
:func:`train` (run.py) owns a run, :func:`fit` (engine.py) trains a :class:`PretrainModule`."""

from aavae.training.checkpoints import newest_loadable_checkpoint
from aavae.training.data import TrainingImages, ValidationViews
from aavae.training.engine import build_trainer, fit
from aavae.training.module import NonFiniteLoss, PretrainModule
from aavae.training.run import train

__all__ = ["NonFiniteLoss", "PretrainModule", "TrainingImages", "ValidationViews", "build_trainer", "fit",
           "newest_loadable_checkpoint", "train"]
