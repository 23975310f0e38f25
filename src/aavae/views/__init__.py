"""Views: the augmentation policy, batched augmentation on the training device, and the
preprocessing of originals. ``from aavae.views import X`` is the public way in.

* :mod:`.policy` -- :class:`ViewPolicy`, the one definition of the view fields, and the
  stored policy's format (:func:`split_view_policy`).
* :mod:`.augment` -- :func:`sample_view_params` and :func:`apply_view_params` (together
  :func:`make_views`): SimCLR-style views of a whole uint8 batch at once, with torchvision's
  distributions and math.
* :mod:`.preprocessing` -- originals as the model sees them (:func:`original_view`,
  :func:`normalize`; together the value :class:`Preprocessing`) and the statistics they are normalised with (:func:`channel_stats`,
  :func:`resolve_preprocessing`).
"""

from aavae.views.augment import ViewParams, apply_view_params, make_views, sample_view_params
from aavae.views.policy import PROVENANCE_KEYS, ViewPolicy, split_view_policy
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
