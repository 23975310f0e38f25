"""The pretraining engine, one concern per module, re-exported here.

data.py (what is trained on, in which order), schedule.py (learning-rate schedule),
optim.py (sync-free optimizers), batchnorm.py (statistics frozen for a side pass), step.py (the training step: eager, compiled or
graph-replayed), module.py (the Lightning module around it), engine.py (Trainer, devices,
resume), checkpoints.py (atomic writes, fallback on resume), snapshots.py (reconstruction grids).
"""

from aavae.training.batchnorm import frozen_batchnorm_statistics
from aavae.training.checkpoints import (
    LAST_CHECKPOINT,
    RUN_MARKER,
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    EpochCheckpoints,
    atomic_torch_save,
    checkpoint_dir_for,
    finished_training,
    newest_loadable_checkpoint,
    previous_run,
    remember_run,
    set_aside_checkpoints,
)
from aavae.training.data import (
    TrainingImages,
    ValidationViews,
    batch_shape,
    epoch_order,
    training_images,
)
from aavae.training.engine import (
    Hardware,
    build_trainer,
    choose_accelerator,
    choose_hardware,
    choose_precision,
    cpu_has_fast_bf16,
    fit,
)
from aavae.training.module import NonFiniteLoss, PretrainModule
from aavae.training.optim import Lamb, WholeStepOptimizer, build_optimizer, parameter_groups
from aavae.training.schedule import schedule_factor, warmup_then_decay
from aavae.training.snapshots import ReconstructionSnapshots, reconstruct, reconstruction_grid
from aavae.training.step import CudaGraphed, StepSettings, TrainStep

__all__ = [
    "LAST_CHECKPOINT",
    "RUN_MARKER",
    "AtomicCheckpointIO",
    "CheckpointOnInterrupt",
    "CudaGraphed",
    "EpochCheckpoints",
    "Hardware",
    "Lamb",
    "NonFiniteLoss",
    "PretrainModule",
    "ReconstructionSnapshots",
    "StepSettings",
    "TrainStep",
    "TrainingImages",
    "ValidationViews",
    "WholeStepOptimizer",
    "atomic_torch_save",
    "batch_shape",
    "build_optimizer",
    "build_trainer",
    "checkpoint_dir_for",
    "choose_accelerator",
    "choose_hardware",
    "choose_precision",
    "cpu_has_fast_bf16",
    "epoch_order",
    "finished_training",
    "fit",
    "frozen_batchnorm_statistics",
    "newest_loadable_checkpoint",
    "parameter_groups",
    "previous_run",
    "reconstruct",
    "reconstruction_grid",
    "remember_run",
    "schedule_factor",
    "set_aside_checkpoints",
    "training_images",
    "warmup_then_decay",
]
