"""The whole AAVAE network (encoder, posterior head, decoder, likelihood scale) and its spec,
with the paper's attribute names, so its checkpoints load by key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import Tensor, nn

from aavae.common.records import STRICT, read_record

from .decoder import ResNetDecoder, build_decoder, check_input_size
from .encoder import ENCODERS, STEMS, ResNetEncoder, build_encoder, encoder_out_dim, get_stem
from .heads import HEADS

MODEL_PREFIXES = ("encoder.", "decoder.", "projection.")
LOG_SCALE_KEY = "log_scale"

# The bounds of the architecture's fields, for the ``model`` parameters and every stored spec.
#: The paper's largest network (ResNet-50w4 with its decoder, 2.6 GB in float32) three times over;
#: training holds four copies, and a stored spec asking for more is refused before it is built.
MAX_PARAMETER_BYTES = 8 * 2**30
MAX_IMAGE_SIDE = 1024
EncoderName = Literal[ENCODERS]  # type: ignore[valid-type]
StemName = Literal[STEMS]  # type: ignore[valid-type]
# Nothing past these bounds is shaped, not even on the meta device to count it: no network fits
# the ceiling at width 1024 or h_dim 65,536 anyway, and a latent of 65,536 is 512 times the paper's.
Width = Annotated[int, Field(ge=1, le=1024)]
HiddenDim = Annotated[int, Field(ge=16, le=2**16, multiple_of=16)]  # viewed as h_dim/16 x 4 x 4
LatentDim = Annotated[int, Field(ge=1, le=2**16)]
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]
#: The likelihood's log-variance: exp(log_scale) and its inverse stay finite in float32 (e^88 is not).
LogScale = Annotated[float, Field(ge=-80.0, le=80.0)]


def check_architecture(encoder: str, stem: str, width: int, h_dim: int | None, latent_dim: int,
                       head: str = "vae") -> None:
    """Refuse what no field bound catches alone: a default ``h_dim`` the decoder cannot take, or
    parameters over :data:`MAX_PARAMETER_BYTES`."""
    if h_dim is None and encoder_out_dim(encoder, width) % 16:
        raise ValueError(
            f"the default h_dim (the encoder's output size, {encoder_out_dim(encoder, width)} for "
            f"{encoder} at width {width}) is not a multiple of 16, which the decoder needs; set "
            f"h_dim to a multiple of 16 or raise width"
        )
    count = _parameter_count(encoder, stem, width, h_dim, latent_dim, head)
    if 4 * count > MAX_PARAMETER_BYTES:
        raise ValueError(
            f"{encoder} at width {width}, h_dim {h_dim}, latent_dim {latent_dim} has {count:,} "
            f"parameters, {4 * count / 1e9:.1f} GB in float32: over the {MAX_PARAMETER_BYTES / 2**30:g} GiB "
            f"a network may take; lower width, h_dim or latent_dim"
        )


@lru_cache(maxsize=256)
def _parameter_count(encoder: str, stem: str, width: int, h_dim: int | None, latent_dim: int, head: str) -> int:
    """Built on the meta device: shapes only, nothing allocated or initialised."""
    with torch.device("meta"):
        parts = _parts(encoder, stem, width, h_dim, latent_dim, head, input_size=get_stem(stem).downsampling)
    return 1 + sum(count_parameters(part) for part in parts)  # 1: log_scale


def _parts(encoder: str, stem: str, width: int, h_dim: int | None, latent_dim: int, head: str,
           input_size: int) -> tuple[ResNetEncoder, ResNetDecoder, nn.Module]:
    """The encoder, decoder and head of an AAVAENet."""
    hidden = encoder_out_dim(encoder, width) if h_dim is None else h_dim
    trunk = build_encoder(encoder, stem, width)
    return (trunk, build_decoder(encoder, stem, input_size, latent_dim, hidden, width),
            HEADS[head](trunk.out_dim, hidden, latent_dim))


@dataclass(config=STRICT)
class ModelSpec:
    """Everything needed to rebuild an AAVAENet, persisted next to its weights. ``h_dim`` (the
    projection's hidden size and the decoder's bottleneck) defaults to the encoder's feature
    size, as in the paper; ``log_scale`` starts the likelihood's log-variance, trained only
    with ``learn_scale``."""

    encoder: EncoderName = "resnet18"
    stem: StemName = "cifar"
    width: Width = 64
    h_dim: HiddenDim | None = None
    latent_dim: LatentDim = 128
    input_size: ImageSide = 32
    log_scale: LogScale = 0.0
    learn_scale: bool = False
    head: Literal[tuple(HEADS)] = "vae"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _buildable(self) -> ModelSpec:
        check_input_size(self.input_size, self.stem)
        check_architecture(self.encoder, self.stem, self.width, self.h_dim, self.latent_dim, self.head)
        return self

    @property
    def feature_dim(self) -> int:
        """Size of the encoder's output (the representation)."""
        return encoder_out_dim(self.encoder, self.width)

    @property
    def resolved_h_dim(self) -> int:
        return self.feature_dim if self.h_dim is None else self.h_dim

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the network's shapes, ``h_dim`` resolved."""
        return {"encoder": self.encoder, "stem": self.stem, "width": self.width,
                "h_dim": self.resolved_h_dim, "latent_dim": self.latent_dim,
                "input_size": self.input_size, "head": self.head}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (str, int, float, bool, None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec a bundle or checkpoint stores: every field present and valid, else refused."""
        return read_record(cls, data, "the model spec", "Pretrain the model again to write its bundle.")


class AAVAENet(nn.Module):
    """Encoder -> head (posterior mu, logvar; or the AE's latent); latent -> decoder -> image."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder, self.decoder, self.projection = _parts(
            spec.encoder, spec.stem, spec.width, spec.h_dim, spec.latent_dim, spec.head, spec.input_size)
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
