"""AAVAE networks: ResNet encoders, mirror decoders, the posterior head and the whole model.

Plain PyTorch; state_dict names follow the paper's code (Lightning-Universe/paper-AAVAE) so
its checkpoints load with :func:`load_paper_checkpoint`.
"""

from .decoder import ResNetDecoder, build_decoder
from .encoder import ENCODERS, STEMS, ResNetEncoder, build_encoder, encoder_out_dim
from .heads import HEADS, AEProjectionHead, ProjectionHead, build_head
from .net import (
    AAVAENet,
    ModelSpec,
    build_model,
    count_parameters,
    load_paper_checkpoint,
)

__all__ = [
    "ENCODERS",
    "STEMS",
    "AAVAENet",
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
    "load_paper_checkpoint",
]
