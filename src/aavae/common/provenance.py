"""Where every artifact came from, and the one place that checks that artifacts belong together.

Kedro's catalog knows artifacts by name, not by lineage: after a re-ingest of other images (or
the same images at another size) the persisted model, view policy and features still load,
and an evaluation would silently score a model on images it was not trained on. So each
artifact records the fingerprints of what it was made from, and each node that reads several
artifacts asks this module whether they belong together before it works:

* **data** -- the dataset card's ``sha256`` (the decoded images and labels of every split:
  other files, another ``image_size`` or resize policy change it; see
  :func:`aavae.data.card.content_sha256`). Ingest stamps it on every image set it saves
  (``ImageSet.fingerprint``, in ``meta.json``); the view policy and the validation views
  record the images they were made from; a model bundle records the data it was trained on
  (``bundle["data"]``: name, source, image shape, resize policy, sha256), and so does every
  training checkpoint (``checkpoint[CHECKPOINT_DATA]``), so one given as ``evaluate.checkpoint``
  is scored as its own data's or as a transfer, never as of unknown data.
* **model** -- the sha256 of a bundle's weights (``bundle["weights_sha256"]``), which
  features record, so features of one model are never scored as another's.

A mismatch raises :class:`ProvenanceError`, naming both sides and the command that makes
them agree again. Artifacts written before fingerprints were recorded cannot be checked:
they load, with one warning saying so.
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

#: The entry of an ``.npz`` artifact that holds its provenance (a JSON string, no pickle).
ARRAYS_KEY = "_provenance"
#: The key of a view policy, a bundle's ``data`` and an array artifact's provenance that holds
#: the data fingerprint.
DATA_SHA256 = "data_sha256"
#: The entry of a training checkpoint that holds :func:`data_identity` of its training data.
CHECKPOINT_DATA = "aavae_data"


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


# -- array artifacts (.npz): provenance as a JSON string entry ----------------------------------


def stamp(arrays: Mapping[str, np.ndarray], **facts: Any) -> dict[str, np.ndarray]:
    """``arrays`` with their provenance (``facts``: fingerprints, settings) as one more entry."""
    return {**arrays, ARRAYS_KEY: np.array(json.dumps(facts, sort_keys=True))}


def stamp_of(arrays: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The provenance :func:`stamp` recorded, or None for arrays written without one."""
    if ARRAYS_KEY not in arrays:
        return None
    return json.loads(str(np.asarray(arrays[ARRAYS_KEY])))


def unstamped(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays without their provenance entry."""
    return {key: value for key, value in arrays.items() if key != ARRAYS_KEY}


# -- the checks -----------------------------------------------------------------------------------

_warned: set[str] = set()


def _unrecorded(artifact: str) -> None:
    if artifact not in _warned:  # once per artifact and process: it cannot change mid-run
        _warned.add(artifact)
        log.warning("%s was written before this project recorded provenance: whether it belongs "
                    "to the other inputs cannot be checked. Rerun the pipeline that writes it to "
                    "record it.", artifact)


def check_data(artifact: str, recorded: str | None, images: str | None, fix: str) -> None:
    """Refuse when ``artifact`` was made from other data than the images ingested now.

    ``recorded`` is the data fingerprint the artifact holds, ``images`` that of the ingested
    images (``ImageSet.fingerprint``); ``fix`` the command that makes them agree. Either side
    unrecorded (an artifact of an older version): a warning, once.
    """
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
    """Refuse features (or baseline features) made by another model or from other images.

    ``model`` is the evaluated bundle's :func:`model_fingerprint` (None: not compared, for
    baselines, which depend on the architecture and seed only); ``data`` the images' fingerprint.
    """
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
