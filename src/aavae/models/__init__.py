"""AAVAE networks in plain PyTorch, named as the paper's code names them, so its checkpoints load
(:func:`load_paper_checkpoint`: any Lightning version's file, read without running its code)."""

from .checkpoint_reading import ForeignObject, load_paper_checkpoint, read_checkpoint
from .decoder import build_decoder
from .encoder import ENCODERS, STEMS, build_encoder
from .heads import ProjectionHead
from .net import AAVAENet, ModelSpec, build_model, count_parameters

__all__ = [
    "ENCODERS",
    "STEMS",
    "AAVAENet",
    "ForeignObject",
    "ModelSpec",
    "ProjectionHead",
    "build_decoder",
    "build_encoder",
    "build_model",
    "count_parameters",
    "load_paper_checkpoint",
    "read_checkpoint",
]
