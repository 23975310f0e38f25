"""Which images an evaluation scores, and how a model takes another dataset's images.

An evaluation is of the model's own data (``same_data``), of another dataset (``transfer``:
``evaluate.checkpoint`` of a model trained elsewhere), or of data the model did not record
(``data_unrecorded``: an old bundle or a paper checkpoint). The image sets scored must be the
ones the evaluated model was paired with (:mod:`aavae.common.provenance`); a transfer brings
them to the model's input size by the same rule its MLflow model applies to any image.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from aavae.common import provenance
from aavae.data.fit import fit_images
from aavae.data.imageset import ImageSet
from aavae.models import ModelSpec

log = logging.getLogger(__name__)

SAME_DATA, TRANSFER, DATA_UNRECORDED = "same_data", "transfer", "data_unrecorded"


def evaluation_images(evaluation_model: dict[str, Any], *imagesets: ImageSet, say: bool = False) -> list[ImageSet]:
    """The image sets as the evaluated model takes them: checked to be the images it is
    evaluated on, and brought to its input size when a transfer evaluation gives it others
    (as its MLflow model brings any image: :func:`aavae.data.fit.fit_image`). Three nodes do;
    the one given ``say`` logs it, so the log says it once."""
    evaluated_on = evaluation_model.get("evaluated_on") or {}
    fix = "Run `kedro run --pipeline evaluate` (features + evaluate together) after the ingest."
    for imageset in imagesets:
        provenance.check_data("the evaluated model's data (evaluation_model)", evaluated_on.get("sha256"),
                              imageset.fingerprint, fix)
    side = ModelSpec.from_dict(evaluation_model["spec"]).input_size
    if all(imageset.image_shape[0] == side for imageset in imagesets):
        return list(imagesets)
    resize = (evaluation_model.get("data") or {}).get("resize") or evaluated_on.get("resize") or "resize_crop"
    if say:
        log.info("Bringing the %s images from %d to %d px (%s), the evaluated model's input size",
                 " and ".join(imageset.split for imageset in imagesets), imagesets[0].image_shape[0], side, resize)
    return [replace(imageset, images=fit_images(imageset.images, side, resize)) for imageset in imagesets]
