"""The whole AAVAE network (encoder, posterior head, decoder, likelihood scale) and its config.

``AAVAENet`` keeps the attribute names of the paper's Lightning module (``encoder``,
``decoder``, ``projection``, ``log_scale``), so the paper's checkpoints load with
:func:`aavae.models.checkpoint_reading.load_paper_checkpoint` after dropping the entries that
are not part of the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .decoder import ResNetDecoder, build_decoder, check_h_dim, check_input_size
from .encoder import (
    ResNetEncoder,
    build_encoder,
    check_width,
    encoder_out_dim,
    get_architecture,
    get_stem,
)
from .heads import HEADS, build_head

# The state_dict names of the model's parts, the paper's: what a checkpoint is read by.
MODEL_PREFIXES = ("encoder.", "decoder.", "projection.")
LOG_SCALE_KEY = "log_scale"


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelSpec.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an AAVAENet; persisted next to its weights.

    ``h_dim`` (projection hidden size and decoder width at the bottleneck) defaults to the
    encoder's feature size, as in the paper. ``input_size`` is the image side the decoder
    reconstructs. ``head`` is ``vae`` (a posterior mean and log-variance) or ``ae`` (the paper's
    deterministic AE latent). ``log_scale`` starts the Gaussian likelihood's log-variance,
    which is trained only when ``learn_scale`` is set.
    """

    encoder: str = "resnet18"
    stem: str = "cifar"
    width: int = 64
    h_dim: int | None = None
    latent_dim: int = 128
    input_size: int = 32
    log_scale: float = 0.0
    learn_scale: bool = False
    head: str = "vae"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"ModelSpec.head must be one of {HEADS}, got {self.head!r}")
        get_architecture(self.encoder)
        get_stem(self.stem)
        check_width(self.width)
        _check_positive_int("latent_dim", self.latent_dim)
        check_input_size(self.input_size, self.stem)
        if self.h_dim is not None:
            _check_positive_int("h_dim", self.h_dim)
            check_h_dim(self.h_dim)
        elif self.feature_dim % 16:
            raise ValueError(
                f"ModelSpec: the default h_dim (the encoder's output size, {self.feature_dim} "
                f"for {self.encoder} at width {self.width}) is not a multiple of 16, which the "
                f"decoder needs; set h_dim to a multiple of 16 or raise width"
            )
        if isinstance(self.log_scale, bool) or not isinstance(self.log_scale, (int, float)):
            raise ValueError(f"ModelSpec.log_scale must be a number, got {self.log_scale!r}")
        object.__setattr__(self, "log_scale", float(self.log_scale))
        if not isinstance(self.learn_scale, bool):
            raise ValueError(
                f"ModelSpec.learn_scale must be true or false, got {self.learn_scale!r}"
            )

    @property
    def feature_dim(self) -> int:
        """Size of the encoder's output (the representation)."""
        return encoder_out_dim(self.encoder, self.width)

    @property
    def resolved_h_dim(self) -> int:
        return self.feature_dim if self.h_dim is None else self.h_dim

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the network's shapes, ``h_dim`` resolved: what an evaluation
        compares against ``model.*`` and records as the architecture it evaluated."""
        return {"encoder": self.encoder, "stem": self.stem, "width": self.width,
                "h_dim": self.resolved_h_dim, "latent_dim": self.latent_dim,
                "input_size": self.input_size, "head": self.head}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (str, int, float, bool, None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ValueError(f"ModelSpec.from_dict expects a mapping, got {type(data).__name__}")
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"ModelSpec: unknown keys {unknown}; known keys are {', '.join(known)}"
            )
        return cls(**data)


class AAVAENet(nn.Module):
    """Encoder -> head (posterior mu, logvar; or the AE's latent); latent -> decoder -> image."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        h_dim = spec.resolved_h_dim
        self.encoder: ResNetEncoder = build_encoder(spec.encoder, spec.stem, spec.width)
        self.decoder: ResNetDecoder = build_decoder(
            spec.encoder, spec.stem, spec.input_size, spec.latent_dim, h_dim, spec.width
        )
        self.projection = build_head(spec.head, self.encoder.out_dim, h_dim, spec.latent_dim)
        self.log_scale = nn.Parameter(
            torch.tensor([spec.log_scale]), requires_grad=spec.learn_scale
        )

    def encode(self, x: Tensor) -> Tensor:
        """The representation: ``(N, 3, H, W) -> (N, feature_dim)``."""
        return self.encoder(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x), each ``(N, latent_dim)`` (``vae`` head only)."""
        if self.spec.head != "vae":
            raise ValueError("posterior() needs the vae head; the ae head has a deterministic latent")
        return self.projection(self.encoder(x))

    def latent_mean(self, features: Tensor) -> Tensor:
        """The latent a reconstruction decodes: the posterior mean, or the AE's latent."""
        out = self.projection(features)
        return out[0] if isinstance(out, tuple) else out

    def decode(self, z: Tensor) -> Tensor:
        """Mean of p(x | z): ``(N, latent_dim) -> (N, 3, input_size, input_size)``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)


def build_model(spec: ModelSpec) -> AAVAENet:
    return AAVAENet(spec)


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or frozen (a fixed ``log_scale`` counts as one)."""
    return sum(parameter.numel() for parameter in module.parameters())
