"""Where every artifact came from, and the one place that checks that artifacts belong together.

Kedro's catalog knows artifacts by name, not lineage: after a re-ingest of other images the
model, view policy and features still load, and an evaluation would score a model on images it
was not trained on. So each artifact records what it was made from: the **data** fingerprint
(the card's ``sha256``, :func:`aavae.data.card.content_sha256`; on image sets, the view policy,
validation views, bundles' ``data`` and checkpoints' :data:`CHECKPOINT_DATA`) and the **model**
fingerprint (a bundle's ``weights_sha256``, on features). A mismatch raises
:class:`ProvenanceError` naming both sides and the command that fixes it; artifacts of older
versions load with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

ARRAYS_KEY = "_provenance"  # an .npz artifact's provenance entry (a JSON string, no pickle)
DATA_SHA256 = "data_sha256"  # the data fingerprint's key in records and array provenance
CHECKPOINT_DATA = "aavae_data"  # a training checkpoint's data_identity of its training data


class ProvenanceError(ValueError):
    """Artifacts that were made from different inputs and must not be used together."""


def short(sha256: str | None) -> str:
    """The first 12 hex digits: enough to tell fingerprints apart in a message."""
    return sha256[:12] if sha256 else "unknown"


def data_identity(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a model bundle records of the data it was trained on, from the dataset card."""
    return {
        "name": card.get("name"),
        "source": card.get("source"),
        "image_shape": list(card.get("image_shape") or []),
        "resize": card.get("resize"),
        "sha256": card.get("sha256"),
    }


def describe_data(identity: Mapping[str, Any] | None) -> str:
    """``digits from sklearn.datasets.load_digits (16 x 16 px, sha256 1a2b3c4d5e6f)``."""
    if not identity:
        return "unrecorded data"
    shape = identity.get("image_shape") or []
    size = f"{shape[0]} x {shape[1]} px, " if len(shape) >= 2 else ""
    source = f" from {identity['source']}" if identity.get("source") else ""
    return f"{identity.get('name') or 'a dataset'}{source} ({size}sha256 {short(identity.get('sha256'))})"


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """A fingerprint of a model's weights: every entry's name, dtype, shape and bytes, in order."""
    hasher = hashlib.sha256(b"aavae-weights-v1")
    for key, value in state_dict.items():
        tensor = torch.as_tensor(value).detach().cpu().contiguous()
        hasher.update(f"\n{key} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def model_fingerprint(bundle: Mapping[str, Any]) -> str:
    """The bundle's ``weights_sha256``, computed for bundles written before it was recorded."""
    return bundle.get("weights_sha256") or weights_sha256(bundle["state_dict"])



def stamp(arrays: Mapping[str, np.ndarray], **facts: Any) -> dict[str, np.ndarray]:
    """``arrays`` with their provenance (``facts``: fingerprints, settings) as one more entry."""
    return {**arrays, ARRAYS_KEY: np.array(json.dumps(facts, sort_keys=True))}


def stamp_of(arrays: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The provenance :func:`stamp` recorded, or None for arrays written without one."""
    if ARRAYS_KEY not in arrays:
        return None
    return json.loads(str(np.asarray(arrays[ARRAYS_KEY])))


_warned: set[str] = set()


def _unrecorded(artifact: str) -> None:
    if artifact not in _warned:  # once per artifact and process: it cannot change mid-run
        _warned.add(artifact)
        log.warning("%s was written before this project recorded provenance: whether it belongs "
                    "to the other inputs cannot be checked. Rerun the pipeline that writes it to "
                    "record it.", artifact)


def check_data(artifact: str, recorded: str | None, images: str | None, fix: str) -> None:
    """Refuse ``artifact`` made from other data (``recorded``) than the images ingested now
    (``images``), saying ``fix``; either side unrecorded (an older version): a warning, once."""
    if recorded is None or images is None:
        _unrecorded(artifact if recorded is None else "the ingested images (03_primary)")
        return
    if recorded != images:
        raise ProvenanceError(
            f"{artifact} was made from other images (data sha256 {short(recorded)}) than the ones "
            f"ingested now (sha256 {short(images)}): using them together would mix two datasets. "
            f"{fix}"
        )


def same_images(*imagesets: Any) -> str | None:
    """The one data fingerprint all these image sets share; refuses sets of different ingests."""
    recorded = {imageset.split: imageset.fingerprint for imageset in imagesets}
    known = {fingerprint for fingerprint in recorded.values() if fingerprint is not None}
    if len(known) > 1:
        listed = ", ".join(f"{split} {short(fp)}" for split, fp in recorded.items())
        raise ProvenanceError(
            f"The ingested image sets come from different ingests ({listed}): a run was "
            "interrupted while saving them, or they were copied in by hand. Run "
            "`kedro run --pipeline ingest` (with your --env and --params) to write them all again."
        )
    if None in recorded.values():
        _unrecorded("the ingested images (03_primary)")
    return next(iter(known), None)


def check_features(
    artifact: str, arrays: Mapping[str, np.ndarray], model: str | None, data: str | None
) -> None:
    """Refuse features of another ``model`` (None: not compared, for baselines) or ``data``."""
    recorded = stamp_of(arrays)
    if recorded is None:
        _unrecorded(artifact)
        return
    fix = ("Run `kedro run --pipeline evaluate` (features + evaluate together) to extract them "
           "again for this model and these images.")
    if model is not None and recorded.get("model_sha256") not in (None, model):
        raise ProvenanceError(
            f"{artifact} holds features of another model (weights sha256 "
            f"{short(recorded.get('model_sha256'))}) than the one evaluated ({short(model)}). {fix}"
        )
    check_data(artifact, recorded.get(DATA_SHA256), data, fix)
