"""Every image of a folder or archive, in any layout, brought to one size in batches.

What the embed pipeline reads: holiday photos, a .tar.gz of a test split, a .zip of scans; no
``<split>/<class>`` layout. Read as ingest reads (:func:`aavae.data.archive.open_source`,
:func:`aavae.data.fit.fit_image`), so an embedded image matches an ingested one, in batches
(a folder larger than memory is embedded batch by batch) decoded on a few threads.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from aavae.data.archive import open_source
from aavae.data.errors import DatasetError
from aavae.data.fit import ResizePolicy, fit_image
from aavae.data.imagefolder import PIL_FORMATS
from aavae.data.layout import IMAGE_EXTENSIONS, is_ignored

logger = logging.getLogger(__name__)

DECODE_CHUNK = 64  # images per decoding task: amortises handing work to a thread
Decoded = tuple[str, np.ndarray | None, str | None]  # name, image, or why it could not be decoded


@dataclass
class ImageBatch:
    """Decoded images (uint8 ``N x S x S x 3``) and their paths inside the folder or archive."""

    paths: list[str]
    images: np.ndarray


@dataclass
class FolderListing:
    """The images of a source (paths relative to it, in storage order) and what was left out."""

    source: Path
    paths: list[str]
    not_images: list[str] = field(default_factory=list)


def is_image_path(path: str) -> bool:
    """An image by its extension, not passed over (as ingest decides)."""
    return not is_ignored(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(path: str | os.PathLike) -> FolderListing:
    """The images of a folder or archive, without decoding any; an error if there are none."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"'{path}' does not exist: give a folder, .tar, .tar.gz/.tgz or .zip of images."
        )
    with open_source(path) as source:
        entries = [entry for entry in source.entries() if not entry.is_dir]
    paths = [entry.name for entry in entries if is_image_path(entry.name)]
    not_images = [entry.name for entry in entries if not is_image_path(entry.name)]
    if not paths:
        raise DatasetError(
            f"'{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}, any folder layout; "
            f"hidden folders are skipped): found {len(entries)} other files."
        )
    return FolderListing(path, paths, not_images)


def iter_image_batches(
    path: str | os.PathLike,
    image_size: int,
    resize: ResizePolicy = "resize_crop",
    *,
    batch_size: int = 1024,
    on_bad_image: str = "error",
    wanted: Callable[[str], bool] | None = None,
    workers: int | None = None,
    skipped: list[str] | None = None,
) -> Iterator[ImageBatch]:
    """The images of ``path`` (those ``wanted``, by default every one) in storage order,
    ``batch_size`` at a time; an undecodable file stops the read naming it, or with
    ``on_bad_image="skip"`` is appended to ``skipped``."""
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    select = is_image_path if wanted is None else wanted
    size = (image_size, image_size)
    workers = workers or min(4, os.cpu_count() or 1)
    with open_source(path) as source, ThreadPoolExecutor(workers, "embed-decode") as pool:
        pending: list[tuple[str, bytes]] = []

        def decode(chunk: list[tuple[str, bytes]]) -> list[Decoded]:
            return [_decode_one(name, data, size, resize) for name, data in chunk]

        def flush() -> ImageBatch:
            chunks = [pending[i : i + DECODE_CHUNK] for i in range(0, len(pending), DECODE_CHUNK)]
            decoded = [item for chunk in pool.map(decode, chunks) for item in chunk]
            pending.clear()
            kept: list[tuple[str, np.ndarray]] = []
            for name, image, error in decoded:
                if error is None:
                    kept.append((name, image))
                elif on_bad_image == "skip":
                    if skipped is not None:
                        skipped.append(name)
                else:
                    raise DatasetError(
                        f"Cannot decode image {source.describe(name)}: {error}. Fix or remove "
                        "the file, or pass --params embed.on_bad_image=skip to leave it out."
                    )
            images = np.stack([image for _, image in kept]) if kept else np.empty((0, *size, 3), np.uint8)
            return ImageBatch([name for name, _ in kept], images)

        for entry, stream in source.files(lambda entry: select(entry.name)):
            pending.append((entry.name, stream.read()))
            if len(pending) >= batch_size:
                yield flush()
        if pending:
            yield flush()


def read_image(path: str | os.PathLike, image_size: int, resize: ResizePolicy = "resize_crop") -> np.ndarray:
    """One image file, brought to ``image_size`` as ingest does (uint8 ``S x S x 3``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Image '{path}' does not exist (or is not a file).")
    name, image, error = _decode_one(path.name, path.read_bytes(), (image_size, image_size), resize)
    if error is not None:
        raise DatasetError(f"Cannot decode image '{path}': {error}.")
    return image


def _decode_one(name: str, data: bytes, size: tuple[int, int], resize: ResizePolicy) -> Decoded:
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            return name, fit_image(image, size, resize), None
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        return name, None, f"{type(error).__name__}: {error}"
