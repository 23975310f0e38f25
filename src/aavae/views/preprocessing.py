"""The original images as the model sees them: floats in [0, 1], optionally the paper's STL-10
zoom (``Resize(105)`` + ``CenterCrop(96)``), normalised per channel with the training images'
(or the recipe's) mean and std. :class:`Preprocessing` is that rule as one value, from the view
policy through the model bundle to serving."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Preprocessing:
    """Floats in [0, 1], zoomed by ``Resize(original_resize)`` + ``CenterCrop`` when given, then
    ``(x - mean) / std`` per channel (on the [0, 1] scale)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    original_resize: int | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
                raise ValueError(f"preprocessing {name} must be three numbers (R, G, B), got {values!r}")
            try:
                as_floats = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise ValueError(f"preprocessing {name} must be three numbers (R, G, B), got {values!r}") from None
            if not all(math.isfinite(v) for v in as_floats) or (name == "std" and min(as_floats) <= 0):
                rule = "positive" if name == "std" else "finite"
                raise ValueError(f"preprocessing {name} must be {rule}, got {list(values)}")
            object.__setattr__(self, name, as_floats)
        resize = self.original_resize
        if resize is not None:
            if isinstance(resize, bool) or not isinstance(resize, numbers.Integral) or resize < 1:
                raise ValueError(f"preprocessing original_resize must be a positive integer or None, got {resize!r}")
            object.__setattr__(self, "original_resize", int(resize))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as view_policy.json, bundles and MLflow models store them."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the stored preprocessing") -> Preprocessing:
        """The preprocessing ``values`` store (``source`` in errors); other keys are ignored, and
        ``original_resize`` may be absent (files written before it existed)."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source} is not a mapping of mean, std and original_resize: "
                             f"got {type(values).__name__}")
        wanted = [f.name for f in fields(cls)]
        missing = [key for key in ("mean", "std") if values.get(key) is None]
        if missing:
            raise ValueError(f"{source} has no {' or '.join(missing)}: it does not say how images "
                             f"were normalised (expected keys {', '.join(wanted)}; rerun the step "
                             "that wrote it)")
        try:
            return cls(**{key: values[key] for key in wanted if key in values})
        except (TypeError, ValueError) as error:  # TypeError: a subclass's field is missing
            raise ValueError(f"{source}: {error}") from None

    def apply(self, images: Tensor) -> Tensor:
        """Originals, uint8 ``N x 3 x H x W`` -> the network's float32 input (channels_last)."""
        mean, std = channel_tensors(self.mean, self.std, images.device)
        return normalize(original_view(images, self.original_resize), mean, std)

    def apply_to_views(self, views: Tensor) -> Tensor:
        """Augmented views, uint8 ``N x 3 x H x W``: normalised, never zoomed (already cropped)."""
        mean, std = channel_tensors(self.mean, self.std, views.device)
        return normalize(to_float(views), mean, std)


def to_float(images: Tensor) -> Tensor:
    """The un-augmented image: uint8 ``N x 3 x H x W`` -> float32 in [0, 1], channels_last."""
    images = _check_images(images, "to_float")
    return images.contiguous(memory_format=torch.channels_last).to(torch.float32).div_(255.0)


def original_view(images: Tensor, original_resize: int | None = None) -> Tensor:
    """:func:`to_float`, or with ``original_resize`` torchvision's ``Resize`` then ``CenterCrop``
    back to the image size (the paper's STL-10 originals), as the views' resize (two matrix
    products) restricted to the centre rows and columns."""
    if original_resize is None:
        return to_float(images)
    images = _check_images(images, "original_view")
    n, channels, height, width = images.shape
    if original_resize < max(height, width):
        raise ValueError(
            f"original_view: original_resize {original_resize} must be at least the image size "
            f"{height}x{width} (it zooms in, then crops the centre back to the image size)"
        )
    rows = _zoom_weights(height, original_resize, images.device) / 255.0
    cols = _zoom_weights(width, original_resize, images.device)
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    x = torch.matmul(x, cols.t())  # (N, C, H, W)
    x = torch.matmul(rows, x)
    return x.contiguous(memory_format=torch.channels_last)


def _zoom_weights(size: int, resized: int, device: torch.device) -> Tensor:
    """(size, size): resize ``size`` -> ``resized`` pixels and keep the centre ``size``."""
    zero = torch.zeros(1, device=device)
    full = _resize_weights(zero, zero + size, size, resized)[0]  # (resized, size)
    offset = int(round((resized - size) / 2.0))
    return full[offset : offset + size]


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel of an ``N x C x H x W`` float batch; ``mean`` and ``std``
    are tensors on ``x``'s device (:func:`channel_tensors`), made once, not at every step."""
    mean_t = mean.to(dtype=x.dtype).view(-1, 1, 1)
    std_t = std.to(dtype=x.dtype).view(-1, 1, 1)
    return (x - mean_t) / std_t


def channel_tensors(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (a :class:`Preprocessing`'s, checked there) as float32 tensors."""
    return tuple(torch.tensor(values, dtype=torch.float32, device=device) for values in (mean, std))


def resolve_preprocessing(
    mean: Sequence[float] | None, std: Sequence[float] | None, original_resize: int | None,
    images: np.ndarray,
) -> Preprocessing:
    """The recipe's ``mean`` and ``std`` when given (the paper's), else the statistics of
    ``images`` (the training split): one rule for a trained model's view policy and a paper
    checkpoint read for evaluation."""
    if mean is None or std is None:
        mean, std = channel_stats(np.asarray(images))
    side = min(images.shape[1:3])
    if original_resize is not None and original_resize < side:
        raise ValueError(
            f"views.original_resize={original_resize} is smaller than the images "
            f"({side} px): it must be at least the image size (it zooms in, e.g. 105 for 96)"
        )
    return Preprocessing(tuple(mean), tuple(std), original_resize)  # type: ignore[arg-type]


def channel_stats(
    images: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``N x H x W x C`` images, in [0, 1] units,
    accumulated in float64 over chunks (a whole dataset never needs a float copy)."""
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"channel_stats expects a non-empty uint8 N x H x W x C array, got {images.dtype} {images.shape}"
        )
    total = np.zeros(images.shape[-1])
    total_sq = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        total_sq += np.square(block).sum(axis=(0, 1, 2))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_images(images: Tensor, caller: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = (
            f"{images.dtype} {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise ValueError(f"{caller} expects a uint8 tensor N x C x H x W, got {got}")
    if images.shape[1] != 3:
        raise ValueError(
            f"{caller} expects RGB images (C = 3) in N x C x H x W order, got shape {tuple(images.shape)}; "
            "convert grayscale datasets to RGB, and permute N x H x W x C arrays with .permute(0, 3, 1, 2)"
        )
    return images


def _resize_weights(
    start: Tensor, length: Tensor, in_size: int, out_size: int, mirror: Tensor | None = None
) -> Tensor:
    """(N, out_size, in_size) weights of torchvision's antialiased bilinear resize of a window:
    a triangle filter around ``start + (o + 0.5) * scale``, widened when shrinking, normalised
    inside the window (edge clamping when enlarging); ``mirror`` flips the output."""
    device = start.device
    start, length = start.view(-1, 1, 1), length.view(-1, 1, 1)
    scale = length / out_size
    out_pixel = torch.arange(out_size, device=device, dtype=torch.float32).view(1, -1, 1)
    if mirror is not None:
        out_pixel = out_pixel + mirror.view(-1, 1, 1) * (out_size - 1 - 2 * out_pixel)
    centre = start + (out_pixel + 0.5) * scale  # (N, out, 1)
    pixel = torch.arange(in_size, device=device, dtype=torch.float32).view(1, 1, -1)
    inside = ((pixel >= start) & (pixel < start + length)).to(torch.float32)  # (N, 1, in)
    weights = (pixel + 0.5 - centre).abs_().mul_(1.0 / scale.clamp(min=1.0)).neg_().add_(1.0)
    weights = weights.clamp_(min=0.0).mul_(inside)
    return weights.div_(weights.sum(dim=2, keepdim=True))
