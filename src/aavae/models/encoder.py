"""ResNet encoders (18/34/50/50w2/50w4) with the paper's three stems: ``cifar`` (3x3 conv,
stride 1), ``stl10`` (7x7, stride 2) and ``imagenet`` (7x7, stride 2, max-pool). Submodule names
follow the paper's code, so its checkpoints load by key; ``width`` (the paper's 64) scales
every channel count."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

STAGES = 4  # residual stages; each after the first halves the resolution


@dataclass(frozen=True)
class Stem:
    """The first convolution (and optional max-pool) of a ResNet."""

    kernel_size: int
    stride: int
    max_pool: bool

    @property
    def downsampling(self) -> int:
        """Total factor between input and final feature map (stem x three strided stages)."""
        return self.stride * (2 if self.max_pool else 1) * 2 ** (STAGES - 1)


@dataclass(frozen=True)
class Architecture:
    """Block type and depth of an encoder and of its mirror decoder."""

    bottleneck: bool
    encoder_blocks: tuple[int, int, int, int]
    decoder_blocks: tuple[int, int, int, int]
    widen: int = 1

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1


_STEMS: dict[str, Stem] = {
    "cifar": Stem(kernel_size=3, stride=1, max_pool=False),
    "stl10": Stem(kernel_size=7, stride=2, max_pool=False),
    "imagenet": Stem(kernel_size=7, stride=2, max_pool=True),
}

# The decoders list their stages in the order they run (coarse to fine), as the paper does.
_ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(False, (2, 2, 2, 2), (2, 2, 2, 2)),
    "resnet34": Architecture(False, (3, 4, 6, 3), (3, 6, 4, 3)),
    "resnet50": Architecture(True, (3, 4, 6, 3), (3, 6, 4, 3)),
    "resnet50w2": Architecture(True, (3, 4, 6, 3), (3, 6, 4, 3), widen=2),
    "resnet50w4": Architecture(True, (3, 4, 6, 3), (3, 6, 4, 3), widen=4),
}

ENCODERS: tuple[str, ...] = tuple(_ARCHITECTURES)
STEMS: tuple[str, ...] = tuple(_STEMS)


def get_stem(name: str) -> Stem:
    """The stem called ``name``; a ValueError lists the choices for an unknown one."""
    if name not in _STEMS:
        raise ValueError(f"unknown stem {name!r}: choose one of {', '.join(STEMS)}")
    return _STEMS[name]


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``; a ValueError lists the choices for an unknown one."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    return _ARCHITECTURES[name]


def encoder_out_dim(name: str, width: int = 64) -> int:
    """Feature size of encoder ``name`` at ``width``, without building it."""
    arch = get_architecture(name)
    return width * arch.widen * 2 ** (STAGES - 1) * arch.expansion


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Projection for the skip path where the identity no longer fits (None where it does)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: saves one activation-sized buffer per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as in ResNet v1.5), 1x1 expand (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: saves one activation-sized buffer per block
        return self.relu(out)


def stage(
    block: type[nn.Module], in_channels: int, planes: int, blocks: int, first: object
) -> nn.Sequential:
    """One resolution stage: the first block takes ``first`` (stride or upscale)."""
    out_channels = planes * block.expansion
    layers = [block(in_channels, planes, first)]
    layers += [block(out_channels, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetEncoder(nn.Module):
    """ResNet trunk ending in global average pooling: ``(N, 3, H, W) -> (N, out_dim)``."""

    def __init__(self, arch: Architecture, stem: Stem, width: int = 64) -> None:
        super().__init__()
        block = Bottleneck if arch.bottleneck else BasicBlock
        channels = width * arch.widen
        self.conv1 = nn.Conv2d(
            3,
            channels,
            stem.kernel_size,
            stride=stem.stride,
            padding=stem.kernel_size // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem.max_pool else nn.Identity()

        in_channels = channels
        for index, blocks in enumerate(arch.encoder_blocks):
            planes = channels * 2**index
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", stage(block, in_channels, planes, blocks, stride))
            in_channels = planes * block.expansion

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_channels
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation for convolutions, unit-scale BatchNorm, as in the paper's encoder.
        if self.conv1.weight.is_meta:  # shapes only (a size estimate): the first normal_ on meta costs seconds
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_encoder(name: str, stem: str = "cifar", width: int = 64) -> ResNetEncoder:
    """Encoder ``name`` with stem ``stem`` (sizes are :class:`ModelSpec`'s to check)."""
    return ResNetEncoder(get_architecture(name), get_stem(stem), width)
