"""Views: the augmentation policy (:mod:`.policy`), batched augmentation on the training device
(:mod:`.augment`) and the preprocessing of originals (:mod:`.preprocessing`)."""

from aavae.views.augment import ViewParams, apply_view_params, make_views, sample_view_params
from aavae.views.policy import POLICY_FILE, PROVENANCE_KEYS, ViewPolicy, split_view_policy
from aavae.views.preprocessing import (
    Preprocessing,
    channel_stats,
    channel_tensors,
    normalize,
    original_view,
    resolve_preprocessing,
    to_float,
)

__all__ = [
    "POLICY_FILE",
    "PROVENANCE_KEYS",
    "Preprocessing",
    "ViewParams",
    "ViewPolicy",
    "apply_view_params",
    "channel_stats",
    "channel_tensors",
    "make_views",
    "normalize",
    "original_view",
    "resolve_preprocessing",
    "sample_view_params",
    "split_view_policy",
    "to_float",
]
