"""The augmentation policy: the one definition of the view fields (names, types, defaults,
meanings, bounds), which ``aavae.config.ViewsConfig`` extends so the two cannot drift. A
resolved ``view_policy.json`` also holds the preprocessing of originals and the images it was
resolved from: :func:`split_view_policy` separates them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from aavae.common.records import STRICT, read_record
from aavae.views.preprocessing import Preprocessing

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _low_to_high(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"the low end exceeds the high end, got {list(pair)}")
    return pair


def _range(**bounds: float) -> Any:
    """A (low, high) pair within ``bounds``; a YAML or JSON list is taken for it (``strict=False``
    on the pair only: each end must still be a number)."""
    end = Annotated[float, Field(**bounds)]
    return Annotated[tuple[end, end], Field(strict=False, json_schema_extra={"ordered": True}),
                     AfterValidator(_low_to_high)]


class ViewPolicy(BaseModel):
    """The augmentation recipe; defaults are the digits run's (no flip, crops from 20 %), the
    paper's recipes are ``conf/cifar10`` and ``conf/stl10``."""

    model_config = STRICT

    crop_scale: _range(gt=0.0, le=1.0) = Field(  # type: ignore[valid-type]
        (0.2, 1.0), description="random resized crop: the range of its area as a share of the image")
    crop_ratio: _range(gt=0.0) = Field(  # type: ignore[valid-type]
        (3 / 4, 4 / 3), description="random resized crop: the range of its aspect ratio")
    flip_p: Probability = Field(
        0.0, description="horizontal flip probability (digits are not mirror-symmetric: 0; photos: 0.5)")
    jitter_strength: float = Field(
        0.5, ge=0.0, le=2.5, description="colour jitter s: brightness, contrast, saturation 0.8 s, hue "
        "0.2 s (hue stays within +-0.5)")
    jitter_p: Probability = Field(0.8, description="probability of the colour jitter")
    grayscale_p: Probability = Field(0.2, description="probability of turning a view grey")
    blur_p: Probability = Field(0.0, description="probability of a Gaussian blur")
    blur_kernel_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="blur kernel size as a share of the image side")
    blur_sigma: _range(gt=0.0) = Field((0.1, 2.0), description="range of the blur's sigma")  # type: ignore[valid-type]

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
        """Plain JSON values (a pair as a list), as ``view_policy.json`` stores them."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the stored view policy") -> ViewPolicy:
        """The policy a stored ``values`` holds: every field present and valid, else refused
        naming ``source``."""
        return read_record(cls, values, source,
                           "Run `kedro run --pipeline views` (or `--pipeline pretrain`) to resolve it again.")


POLICY_FILE = "05_model_input/view_policy.json"  # under an environment's artifact root (the catalog's)
PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))
PROVENANCE_KEYS = ("data_sha256",)  # the images it was resolved from (aavae.common.provenance)


def split_view_policy(view_policy: Mapping[str, Any], path: str) -> tuple[ViewPolicy, Preprocessing]:
    """A resolved ``view_policy.json`` as (the augmentation policy, the preprocessing); its
    errors name ``path``, the file it was read from."""
    source = f"the view policy ({path})"
    policy = ViewPolicy.from_dict({k: v for k, v in view_policy.items()
                                   if k not in PREPROCESSING_KEYS + PROVENANCE_KEYS}, source)
    return policy, Preprocessing.from_dict(view_policy, source=source)
