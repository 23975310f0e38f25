"""The augmentation policy: what views are drawn from, as a frozen, JSON-able value.

:class:`ViewPolicy` is the one definition of the view fields (``conf``'s ``views`` group is
validated into it); a resolved policy, as ``view_policy.json`` stores it, carries the
preprocessing of originals (:data:`PREPROCESSING_KEYS`) and the images it was resolved from
(:data:`PROVENANCE_KEYS`) beside it: :func:`split_view_policy` separates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ViewPolicy:
    """The augmentation recipe. Defaults are the paper's CIFAR-10 one (STL-10: jitter 1, blur 0.5).

    Colour-jitter strength ``s`` gives brightness/contrast/saturation ``0.8 s`` and hue
    ``0.2 s``, as in SimCLR. ``blur_p = 0`` turns the Gaussian blur off.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel_fraction: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            value = getattr(self, name)
            if not (isinstance(value, Sequence) and len(value) == 2):
                raise ValueError(f"ViewPolicy.{name} must be a pair (low, high), got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        _check_range("crop_scale", self.crop_scale, upper=1.0)
        _check_range("crop_ratio", self.crop_ratio)
        _check_range("blur_sigma", self.blur_sigma)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"ViewPolicy.{name} must be a probability in [0, 1], got {getattr(self, name)}"
                )
        if not 0.0 <= self.jitter_strength <= 2.5:
            # hue = 0.2 s must stay within torchvision's [-0.5, 0.5]
            raise ValueError(
                f"ViewPolicy.jitter_strength must be in [0, 2.5], got {self.jitter_strength}"
            )
        if not 0.0 < self.blur_kernel_fraction <= 1.0:
            raise ValueError(
                f"ViewPolicy.blur_kernel_fraction must be in (0, 1], got {self.blur_kernel_fraction}"
            )

    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        """(low, high) of the brightness, contrast, saturation and hue factors (ColorJitter's)."""
        strength = 0.8 * self.jitter_strength
        hue = 0.2 * self.jitter_strength
        multiplicative = (max(0.0, 1.0 - strength), 1.0 + strength)
        return multiplicative, multiplicative, multiplicative, (-hue, hue)

    def blur_kernel_size(self, size: int) -> int:
        """Odd kernel width, ``blur_kernel_fraction`` of the image size (SimCLR: 10 %)."""
        kernel = int(self.blur_kernel_fraction * size)
        return kernel if kernel % 2 == 1 else kernel + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ViewPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown view policy key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(
            **{key: tuple(v) if isinstance(v, (list, tuple)) else v for key, v in values.items()}
        )


PREPROCESSING_KEYS = ("mean", "std", "original_resize")
#: What a resolved view policy records of the images it was resolved from (aavae.common.provenance).
PROVENANCE_KEYS = ("data_sha256",)


def split_view_policy(view_policy: Mapping[str, Any]) -> tuple[ViewPolicy, dict[str, Any]]:
    """A resolved ``view_policy.json`` as (the augmentation policy, the preprocessing of
    originals: ``mean``, ``std`` and ``original_resize``, None when absent)."""
    policy = ViewPolicy.from_dict({k: v for k, v in view_policy.items()
                                   if k not in PREPROCESSING_KEYS + PROVENANCE_KEYS})
    preprocessing = {key: view_policy.get(key) for key in PREPROCESSING_KEYS}
    return policy, preprocessing


def _check_range(name: str, value: tuple[float, float], upper: float = math.inf) -> None:
    low, high = value
    if not 0.0 < low <= high <= upper:
        bound = "" if upper == math.inf else f" <= {upper}"
        raise ValueError(f"ViewPolicy.{name} must satisfy 0 < low <= high{bound}, got {value}")
