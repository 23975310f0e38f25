"""The one in-memory form every dataset reader returns, and its on-disk layout."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aavae.common.atomic import replaced_atomically
from aavae.data.staging import map_npy, place_npy, relocated

UNLABELED = -1  # label of images that have none (STL-10's unlabeled split)


@dataclass(frozen=True)
class ImageSet:
    """Images of one split: uint8 ``N x H x W x C`` (C = 3), int64 labels, class names, and
    the ``fingerprint`` of the ingest that made it (the card's ``sha256``; None before ingest
    stamps it, or from an older version), which later artifacts are checked against."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: str
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageSet '{self.split}': images must be uint8 N x H x W x C, "
                f"got {self.images.dtype} with shape {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"ImageSet '{self.split}': {len(self.images)} images but labels of shape "
                f"{self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @classmethod
    def empty(cls, split: str, image_shape: tuple[int, int, int], class_names: tuple[str, ...]) -> ImageSet:
        return cls(np.zeros((0, *image_shape), np.uint8), np.zeros(0, np.int64), class_names, split)

    def counts_per_class(self) -> dict[str, int]:
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        result = {name: int(n) for name, n in zip(self.class_names, counts, strict=False)}
        unlabeled = int((self.labels == UNLABELED).sum())
        if unlabeled:
            result["<unlabeled>"] = unlabeled
        return result


def save_imageset(imageset: ImageSet, folder: str | os.PathLike) -> None:
    """Write ``images.npy``, ``labels.npy`` and ``meta.json`` into ``folder``, whole or not at
    all (:func:`aavae.common.atomic.replaced_atomically`). Images mapping a whole .npy file
    are moved or linked into place (:func:`aavae.data.staging.place_npy`), never copied
    through memory."""
    folder = Path(folder)
    with replaced_atomically(folder) as staging:
        staging.mkdir()
        if not place_npy(imageset.images, staging / "images.npy"):
            np.save(staging / "images.npy", np.ascontiguousarray(imageset.images))
        np.save(staging / "labels.npy", imageset.labels.astype(np.int64))
        meta = {"split": imageset.split, "class_names": list(imageset.class_names),
                "data_sha256": imageset.fingerprint}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    relocated(imageset.images, folder / "images.npy")


def load_imageset(folder: str | os.PathLike, mmap: bool = True) -> ImageSet:
    """Read what :func:`save_imageset` wrote; images are memory-mapped by default."""
    folder = Path(folder)
    missing = [n for n in ("images.npy", "labels.npy", "meta.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Image set folder '{folder}' lacks {', '.join(missing)}: run the ingest "
            "pipeline first (kedro run --pipeline pretrain)."
        )
    try:
        meta = json.loads((folder / "meta.json").read_text())
        path = folder / "images.npy"
        images = map_npy(path, staged=False) if mmap else np.load(path)
        labels = np.load(folder / "labels.npy")
    except (ValueError, OSError, EOFError) as error:  # truncated or overwritten files
        raise ValueError(
            f"Image set folder '{folder}' is damaged ({error}): a file in it was truncated or "
            "overwritten. Run the ingest pipeline again to rewrite it (kedro run --pipeline "
            "ingest, with your --env and --params)."
        ) from error
    return ImageSet(images, labels, tuple(meta["class_names"]), meta["split"], meta.get("data_sha256"))
