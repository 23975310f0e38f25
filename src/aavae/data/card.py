"""What a reader hands back: the splits it read and where they came from (for a dataset card),
and the check that ingested images are the dataset an environment asks for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aavae.common.provenance import ProvenanceError, data_identity, describe_data
from aavae.data.archive import file_digests
from aavae.data.imageset import ImageSet
from aavae.data.staging import file_chunks, npy_file_of

FINGERPRINT_VERSION = "aavae-imagesets-v1"


def content_sha256(splits: dict[str, ImageSet]) -> str:
    """The sha256 of the images and labels exactly as ingested, split by split.

    Checkpoints and provenance key on it, so it changes whenever the training data does
    (other files, ``image_size``, resize policy, skipped files, labels, class names); hashing
    the decoded arrays gives a folder and its .tar.gz one fingerprint, for about 0.15 s per
    CIFAR-10. Per split: a JSON header, the C-order image bytes, the labels as ``<i8``; a
    staged .npy file is read in chunks, never through its map (no memory for a set over RAM).
    """
    hasher = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for name, imageset in splits.items():
        path = npy_file_of(imageset.images)
        images = imageset.images if path is not None else np.ascontiguousarray(imageset.images)
        header = {
            "split": name,
            "class_names": list(imageset.class_names),
            "shape": list(images.shape),
            "dtype": str(images.dtype),
        }
        hasher.update(b"\n" + json.dumps(header, sort_keys=True).encode() + b"\n")
        if path is None:
            hasher.update(memoryview(images).cast("B"))
        else:
            for chunk in file_chunks(path, images.offset, images.nbytes):
                hasher.update(chunk)
        hasher.update(np.ascontiguousarray(imageset.labels, dtype="<i8").tobytes())
    return hasher.hexdigest()


@dataclass(frozen=True)
class ReadResult:
    """Splits read from one source, with the provenance a dataset card records: the path read,
    the format, the archive's ``sha256sum`` (None for a folder), the entries skipped as
    undecodable, and ``sha256`` (:func:`content_sha256`, computed here so no reader forgets it)."""

    splits: dict[str, ImageSet]
    source: str
    format: str
    archive_sha256: str | None = None
    skipped: list[str] = field(default_factory=list)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", content_sha256(self.splits))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: provenance plus image shape and counts per class of each split."""
        return {
            "source": self.source,
            "format": self.format,
            "sha256": self.sha256,
            "archive_sha256": self.archive_sha256,
            "skipped": list(self.skipped),
            "splits": {
                name: {
                    "count": len(imageset),
                    "image_shape": list(imageset.image_shape),
                    "counts_per_class": imageset.counts_per_class(),
                }
                for name, imageset in self.splits.items()
            },
        }


def check_ingested(card: Mapping[str, Any], name: str, path: str | None, where: str) -> None:
    """Refuse images ingested in ``where`` (their ``card``) from another dataset than ``name``
    and, for an image folder, ``path`` (the same archive elsewhere, by sha256, is the same; a
    path missing here cannot be compared)."""
    other = None
    if card.get("name") != name:
        other = f"dataset.name={name}"
    elif name == "imagefolder" and path and Path(path).exists() and not _same_source(Path(path), card):
        other = f"dataset.path={path}"
    if other:
        raise ProvenanceError(
            f"The images ingested in {where} are {describe_data(data_identity(card))}, but this "
            f"environment's dataset is {other}: their scores would read as this environment's "
            "dataset's. Ingest it (`kedro run --pipeline pretrain` with this --env and its "
            "dataset.path), or evaluate them with the --env and --params they were ingested with."
        )


def _same_source(given: Path, card: Mapping[str, Any]) -> bool:
    if given.resolve() == Path(card.get("source") or "").resolve():
        return True
    return given.is_file() and card.get("archive_sha256") == file_digests(given)["sha256"]
