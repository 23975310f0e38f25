"""Mirror decoders: latent vector -> image, the encoder's ResNet run backwards, as the paper's
final decoder: no batch norm, biased convolutions, nearest-neighbour upsampling for every
stride. Two Linear layers to ``h_dim``, viewed as a ``(h_dim // 16) x 4 x 4`` map, then four
stages of ``4w, 2w, w, w/2`` planes (x widen) back to the input size. Submodule names follow the
paper's code, so its checkpoints load by key."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import Architecture, Stem, get_architecture, get_stem, stage

SEED_SIDE = 4  # side of the first feature map the latent is reshaped into
DECODER_WIDTH_FACTOR = 8  # the paper's decoder width_per_group (512) over the encoder's (64)


class Upscale(nn.Module):
    """Nearest-neighbour upsampling by 2, or to a fixed square size."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if self.size is None:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if x.shape[-2:] == (self.size, self.size):
            return x  # nearest-neighbour resize to the same size is the identity
        return F.interpolate(x, size=(self.size, self.size), mode="nearest")


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=True)


def _skip_path(
    in_channels: int, out_channels: int, upscale: Upscale | None
) -> nn.Sequential | None:
    """Skip connection of a block that changes size or channels (None: plain identity)."""
    if upscale is None and in_channels == out_channels:
        return None
    layers: list[nn.Module] = [] if upscale is None else [Upscale(upscale.size)]
    layers.append(_conv1x1(in_channels, out_channels))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Upscale (if any), then two 3x3 convolutions, with a residual connection."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, upscale: Upscale | None = None) -> None:
        super().__init__()
        self.upscale = upscale
        self.conv1 = _conv3x3(in_channels, planes)
        self.conv2 = _conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = _skip_path(in_channels, planes, upscale)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = x if self.upscale is None else self.upscale(x)
        out = self.conv2(self.relu(self.conv1(out)))
        out += identity  # in place: saves one activation-sized buffer per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1, upscale (if any), 3x3, 1x1 expand, with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, upscale: Upscale | None = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.upscale = upscale
        self.conv1 = _conv1x1(in_channels, planes)
        self.conv2 = _conv3x3(planes, planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = _skip_path(in_channels, out_channels, upscale)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.conv1(x))
        if self.upscale is not None:
            out = self.upscale(out)
        out = self.conv3(self.relu(self.conv2(out)))
        out += identity  # in place: saves one activation-sized buffer per block
        return self.relu(out)


def check_input_size(input_size: int, stem_name: str) -> None:
    """The decoder rebuilds ``input_size`` exactly only when the stem's downsampling divides it."""
    factor = get_stem(stem_name).downsampling
    if input_size < factor or input_size % factor:
        raise ValueError(
            f"input_size {input_size} does not fit stem {stem_name!r}: it downsamples by "
            f"{factor}, so the image side must be a positive multiple of {factor} "
            f"(e.g. {max(factor, input_size // factor * factor)}); resize the images or pick "
            f"another stem"
        )


class ResNetDecoder(nn.Module):
    """``z (N, latent_dim) -> x_hat (N, 3, input_size, input_size)``."""

    def __init__(
        self,
        arch: Architecture,
        stem: Stem,
        input_size: int,
        latent_dim: int,
        h_dim: int,
        width: int = 64,
    ) -> None:
        super().__init__()
        block = Bottleneck if arch.bottleneck else BasicBlock
        self.h_dim = h_dim
        self.stem = stem
        self.linear_projection1 = nn.Linear(latent_dim, h_dim)
        self.linear_projection2 = nn.Linear(h_dim, h_dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = _conv1x1(h_dim // SEED_SIDE**2, h_dim)

        # The first stage resizes the 4x4 seed to the encoder's final resolution; each later
        # stage doubles it, mirroring the encoder's strided stages.
        channels = DECODER_WIDTH_FACTOR * width * arch.widen
        in_channels = h_dim
        for index, blocks in enumerate(arch.decoder_blocks):
            planes = max(1, channels // 2 ** (index + 1))
            upscale = Upscale(input_size // stem.downsampling) if index == 0 else Upscale()
            setattr(self, f"layer{index + 1}", stage(block, in_channels, planes, blocks, upscale))
            in_channels = planes * block.expansion

        self.conv2 = _conv3x3(in_channels, width)
        self.final_conv = _conv3x3(width, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.relu(self.linear_projection1(z))
        x = self.relu(self.linear_projection2(x))
        x = x.view(x.size(0), self.h_dim // SEED_SIDE**2, SEED_SIDE, SEED_SIDE)
        # channels_last from the first map on: the encoder's layout, which oneDNN and cuDNN
        # convolve fastest (measured on a 2-core Xeon: the bf16 decoder step 30 % faster).
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.relu(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.stem.max_pool:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.relu(self.conv2(x))
        if self.stem.stride > 1:
            x = F.interpolate(x, scale_factor=self.stem.stride, mode="nearest")
        return self.final_conv(x)


def build_decoder(
    name: str,
    stem: str,
    input_size: int,
    latent_dim: int,
    h_dim: int,
    width: int = 64,
) -> ResNetDecoder:
    """The mirror decoder of encoder ``name`` (sizes are :class:`ModelSpec`'s to check)."""
    arch = get_architecture(name)
    check_input_size(input_size, stem)
    return ResNetDecoder(arch, get_stem(stem), input_size, latent_dim, h_dim, width)
