"""The augmentation policy: what views are drawn from, as a frozen, JSON-able value.

:class:`ViewPolicy` is the one definition of the view fields: their names, types, defaults
(``conf/base``'s, the digits run), meanings and bounds. ``conf``'s ``views`` group is validated
by a schema generated from it (:class:`aavae.config.ViewsConfig`), so the two cannot drift. A
resolved policy, as ``view_policy.json`` stores it, carries the preprocessing of originals
(:data:`PREPROCESSING_KEYS`) and the images it was resolved from (:data:`PROVENANCE_KEYS`)
beside it: :func:`split_view_policy` separates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aavae.views.preprocessing import Preprocessing

_PROBABILITY = {"ge": 0.0, "le": 1.0}


def _view_field(default: Any, description: str, **bounds: float) -> Any:
    """A view field: its default, what it means and its bounds (``ge``, ``gt``, ``le``); a
    pair ``(low, high)`` keeps the bounds at both ends, with ``low <= high``."""
    return field(default=default, metadata={"description": description, "bounds": bounds})


@dataclass(frozen=True)
class ViewPolicy:
    """The augmentation recipe. Defaults are the project's default run's (digits: no flip,
    crops of at least 20 % of the image); the paper's CIFAR-10 recipe (``conf/cifar10``) crops
    from 8 % and flips half the views, its STL-10 one (``conf/stl10``) also has jitter 1 and
    blur 0.5.

    Colour-jitter strength ``s`` gives brightness/contrast/saturation ``0.8 s`` and hue
    ``0.2 s``, as in SimCLR. ``blur_p = 0`` turns the Gaussian blur off.
    """

    crop_scale: tuple[float, float] = _view_field(
        (0.2, 1.0), "random resized crop: the range of its area as a share of the image", gt=0.0, le=1.0)
    crop_ratio: tuple[float, float] = _view_field(
        (3 / 4, 4 / 3), "random resized crop: the range of its aspect ratio", gt=0.0)
    flip_p: float = _view_field(
        0.0, "horizontal flip probability (digits are not mirror-symmetric: 0; photos: 0.5)", **_PROBABILITY)
    jitter_strength: float = _view_field(
        0.5, "colour jitter s: brightness, contrast, saturation 0.8 s, hue 0.2 s (hue stays "
        "within +-0.5)", ge=0.0, le=2.5)
    jitter_p: float = _view_field(0.8, "probability of the colour jitter", **_PROBABILITY)
    grayscale_p: float = _view_field(0.2, "probability of turning a view grey", **_PROBABILITY)
    blur_p: float = _view_field(0.0, "probability of a Gaussian blur", **_PROBABILITY)
    blur_kernel_fraction: float = _view_field(
        0.1, "blur kernel size as a share of the image side", gt=0.0, le=1.0)
    blur_sigma: tuple[float, float] = _view_field((0.1, 2.0), "range of the blur's sigma", gt=0.0)

    def __post_init__(self) -> None:
        for name in view_field_names():
            try:
                value = check_view_field(name, getattr(self, name))
            except ValueError as error:
                raise ValueError(f"ViewPolicy.{error}") from None
            object.__setattr__(self, name, value)

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
        known = set(view_field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown view policy key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(
            **{key: tuple(v) if isinstance(v, (list, tuple)) else v for key, v in values.items()}
        )


_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<="}


def view_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ViewPolicy))


def view_field_description(name: str) -> str:
    return _field(name).metadata["description"]


def _is_pair(name: str) -> bool:
    """Whether field ``name`` is a ``(low, high)`` range."""
    return isinstance(_field(name).default, tuple)


def bounds_text(name: str) -> str:
    """Field ``name``'s bounds as people write them: ``>= 0, <= 1``; a pair's ``0 < low <= high <= 1``."""
    bounds = _field(name).metadata["bounds"]
    if _is_pair(name):
        lower = "".join(f"{limit:g} {_SYMBOLS[rule].replace('>', '<')} " for rule, limit in bounds.items()
                        if rule in ("ge", "gt"))
        upper = "".join(f" <= {limit:g}" for rule, limit in bounds.items() if rule == "le")
        return f"{lower}low <= high{upper}"
    return ", ".join(f"{_SYMBOLS[rule]} {limit:g}" for rule, limit in bounds.items())


def check_view_field(name: str, value: Any) -> Any:
    """``value`` checked against field ``name``'s bounds, a pair as a tuple of floats; the
    ValueError of a bad one starts with the field's name and says what it must be."""
    bounds = _field(name).metadata["bounds"]
    if _is_pair(name):
        if isinstance(value, (str, bytes)) or not (isinstance(value, Sequence) and len(value) == 2):
            raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
        low, high = (_number(name, v) for v in value)
        if not (low <= high and _within(low, bounds) and _within(high, bounds)):
            raise ValueError(f"{name} must satisfy {bounds_text(name)}, got {value}")
        return (low, high)
    number = _number(name, value)
    if not _within(number, bounds):
        raise ValueError(f"{name} must be {bounds_text(name)}, got {value}")
    return value


def _field(name: str) -> Any:
    try:
        return next(f for f in fields(ViewPolicy) if f.name == name)
    except StopIteration:
        raise ValueError(f"{name!r} is not a view field; the fields: {', '.join(view_field_names())}") from None


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _within(value: float, bounds: Mapping[str, float]) -> bool:
    checks = {"ge": lambda limit: value >= limit, "gt": lambda limit: value > limit,
              "le": lambda limit: value <= limit}
    return all(checks[rule](limit) for rule, limit in bounds.items())


#: The keys of the preprocessing of originals in a resolved view policy.
PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))
#: What a resolved view policy records of the images it was resolved from (aavae.common.provenance).
PROVENANCE_KEYS = ("data_sha256",)


def split_view_policy(view_policy: Mapping[str, Any]) -> tuple[ViewPolicy, Preprocessing]:
    """A resolved ``view_policy.json`` as (the augmentation policy, the preprocessing of
    originals)."""
    policy = ViewPolicy.from_dict({k: v for k, v in view_policy.items()
                                   if k not in PREPROCESSING_KEYS + PROVENANCE_KEYS})
    return policy, Preprocessing.from_dict(view_policy, source="the view policy (view_policy.json)")
