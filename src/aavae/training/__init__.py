"""The pretraining engine, one concern per module; here, what the pipeline and a notebook use.

run.py (one run, owned whole: :func:`train`), engine.py (Trainer, devices, resume: :func:`fit`),
module.py (the Lightning module), step.py (the training step: eager, compiled or
graph-replayed), fallback.py (the engine that works), pacing.py (decisions from the step
rate), data.py and streaming.py (what is trained on, in which order), schedule.py, optim.py,
checkpoints.py, distributed.py and syncbn.py, layout.py, batchnorm.py, progress.py, snapshots.py.
"""

from aavae.training.checkpoints import newest_loadable_checkpoint
from aavae.training.data import TrainingImages, ValidationViews
from aavae.training.engine import build_trainer, fit
from aavae.training.module import NonFiniteLoss, PretrainModule
from aavae.training.run import train

__all__ = ["NonFiniteLoss", "PretrainModule", "TrainingImages", "ValidationViews", "build_trainer", "fit",
           "newest_loadable_checkpoint", "train"]
