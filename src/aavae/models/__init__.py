"""AAVAE networks: ResNet encoders, mirror decoders, the posterior head and the whole model.

Plain PyTorch; state_dict names follow the paper's code (Lightning-Universe/paper-AAVAE) so
its checkpoints load with :func:`load_paper_checkpoint` (checkpoint_reading.py: any
Lightning version's file, read without running its code).
"""

from .checkpoint_reading import (
    KNOWN_CLASSES,
    ForeignObject,
    head_of,
    load_paper_checkpoint,
    model_entries,
    read_checkpoint,
    state_dict_of,
)
from .decoder import ResNetDecoder, build_decoder
from .encoder import ENCODERS, STEMS, ResNetEncoder, build_encoder, encoder_out_dim
from .heads import HEADS, AEProjectionHead, ProjectionHead, build_head
from .net import (
    AAVAENet,
    ModelSpec,
    build_model,
    count_parameters,
)

__all__ = [
    "ENCODERS",
    "KNOWN_CLASSES",
    "STEMS",
    "AAVAENet",
    "ForeignObject",
    "ModelSpec",
    "AEProjectionHead",
    "HEADS",
    "ProjectionHead",
    "build_head",
    "ResNetDecoder",
    "ResNetEncoder",
    "build_decoder",
    "build_encoder",
    "build_model",
    "count_parameters",
    "encoder_out_dim",
    "head_of",
    "load_paper_checkpoint",
    "model_entries",
    "read_checkpoint",
    "state_dict_of",
]
