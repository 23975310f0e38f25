"""STL-10 from its official binary release: ``stl10_binary.tar.gz`` or the extracted folder.

``<split>_X.bin`` holds uint8 3 x 96 x 96 images, each plane column-major; ``<split>_y.bin``
a uint8 label in 1..10 per image; ``class_names.txt`` a name per line. Splits: ``train``
(5,000), ``test`` (8,000), ``unlabeled`` (100,000, labels :data:`UNLABELED`, 2.8 GB: streamed
in chunks into the final array, never two copies of a split in memory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from aavae.data.archive import Entry, Source, open_source, read_exactly
from aavae.data.card import ReadResult
from aavae.data.errors import DatasetError
from aavae.data.imageset import UNLABELED, ImageSet
from aavae.data.official import OfficialArchive, archive_sha256, locate_official

STL10 = OfficialArchive(
    dataset="STL-10 (binary version)",
    archive_name="stl10_binary.tar.gz",
    folder_name="stl10_binary",
    marker_files=("class_names.txt", "train_X.bin", "test_X.bin", "unlabeled_X.bin"),
    url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
)
USE_OFFICIAL = (
    f"Use the official {STL10.archive_name} (--params dataset.download=true fetches it)."
)
SPLITS = ("train", "test", "unlabeled")
LABELED_SPLITS = ("train", "test")
CLASS_NAMES_FILE = "class_names.txt"
NUM_CLASSES = 10
IMAGE_SIDE = 96
IMAGE_BYTES = 3 * IMAGE_SIDE * IMAGE_SIDE
MAX_IMAGES_PER_FILE = 100_000  # the unlabeled split, the largest file of the release
MAX_TEXT_BYTES = 64 * 1024  # class_names.txt is 57 bytes
CHUNK_IMAGES = 1024  # images converted per step: 28 MB of scratch memory


def images_file(split: str) -> str:
    return f"{split}_X.bin"


def labels_file(split: str) -> str:
    return f"{split}_y.bin"


def read_stl10(
    path: str | os.PathLike, *, splits: Sequence[str] = SPLITS, download: bool = False
) -> ReadResult:
    """The chosen STL-10 ``splits`` (without ``unlabeled``: 2.8 GB less memory) of 96 x 96
    images from ``stl10_binary.tar.gz``, its extracted folder or a folder holding either;
    ``download`` fetches the official archive (2.6 GB) when there is no local copy."""
    wanted_splits = _checked_splits(splits)
    location = locate_official(path, STL10, download)
    file_sha256 = archive_sha256(location, STL10)
    with open_source(location, max_member_bytes=MAX_IMAGES_PER_FILE * IMAGE_BYTES) as source:
        images, labels, class_names = _read_files(source, wanted_splits)
    result = {
        split: ImageSet(
            images[split],
            labels.get(split, np.full(len(images[split]), UNLABELED, dtype=np.int64)),
            class_names,
            split,
        )
        for split in wanted_splits
    }
    return ReadResult(result, str(location), "stl10-binary", file_sha256)


def _checked_splits(splits: Sequence[str]) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise DatasetError(
            f"splits={list(splits)!r}: STL-10 splits are {', '.join(SPLITS)}; choose one or more "
            "(the pipeline reads train and test, plus unlabeled with dataset.unlabeled=true)."
        )
    return tuple(dict.fromkeys(splits))


def _read_files(
    source: Source, splits: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...]]:
    """Stream the needed files in storage order; refuse incomplete splits."""
    needed = {CLASS_NAMES_FILE}
    needed.update(images_file(split) for split in splits)
    needed.update(labels_file(split) for split in splits if split in LABELED_SPLITS)
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    class_names: tuple[str, ...] = ()
    seen: set[str] = set()
    for name, entry, stream in source.named_files(needed, "STL-10"):
        seen.add(name)
        where = source.describe(entry.name)
        split = name.rsplit("_", 1)[0]
        _check_size(name, entry, where)
        if name == CLASS_NAMES_FILE:
            class_names = _parse_class_names(stream.read(), where)
        elif name.endswith("_X.bin"):
            images[split] = _read_images(stream, entry, where)
        else:
            labels[split] = _parse_labels(stream.read(), where)
    missing = sorted(needed - seen)
    if missing:
        without = (
            ", or set --params dataset.unlabeled=false to ingest without the unlabeled split"
            if images_file("unlabeled") in missing
            else ""
        )
        raise DatasetError(
            f"{source.describe()} lacks {', '.join(missing)} (needed for splits {', '.join(splits)}). "
            f"Expected the official STL-10 binary files: use {STL10.archive_name} "
            f"(--params dataset.download=true fetches it){without}. {STL10.image_folder_hint()}"
        )
    for split in labels:
        if len(labels[split]) != len(images[split]):
            raise DatasetError(
                f"{source.describe()}: '{labels_file(split)}' has {len(labels[split])} labels but "
                f"'{images_file(split)}' has {len(images[split])} images; they must match. "
                f"{USE_OFFICIAL}"
            )
    return images, labels, class_names


def _check_size(name: str, entry: Entry, where: str) -> None:
    """Refuse a file larger than any of the release's before allocating or reading it."""
    if name.endswith("_X.bin"):
        limit = MAX_IMAGES_PER_FILE * IMAGE_BYTES
    elif name.endswith("_y.bin"):
        limit = MAX_IMAGES_PER_FILE
    else:
        limit = MAX_TEXT_BYTES
    if entry.size > limit:
        raise DatasetError(
            f"{where} has {entry.size:,} bytes, more than the {limit:,} an STL-10 file of this "
            f"kind can have: it is not an STL-10 file. {USE_OFFICIAL}"
        )


def _read_images(stream: BinaryIO, entry: Entry, where: str) -> np.ndarray:
    """Read ``N x 3 x 96 x 96`` column-major planes into a row-major ``N x 96 x 96 x 3`` array."""
    count, remainder = divmod(entry.size, IMAGE_BYTES)
    if remainder:
        raise DatasetError(
            f"{where} has {entry.size:,} bytes, not a multiple of {IMAGE_BYTES:,} (one 3 x 96 x 96 "
            f"image): the file is truncated or not an STL-10 image file. {USE_OFFICIAL}"
        )
    images = np.empty((count, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    # Raw index order is [image, channel, column, row]; the result wants [image, row, column, channel].
    chunk = np.empty((min(CHUNK_IMAGES, count), 3, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    for start in range(0, count, CHUNK_IMAGES):
        stop = min(start + CHUNK_IMAGES, count)
        raw = chunk[: stop - start]
        read_exactly(stream, memoryview(raw).cast("B"), where)
        images[start:stop] = raw.transpose(0, 3, 2, 1)
    return images


def _parse_labels(data: bytes, where: str) -> np.ndarray:
    labels = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise DatasetError(
            f"{where}: labels must lie in 1..{NUM_CLASSES}, found {labels.min()}..{labels.max()}; "
            f"it is not an STL-10 label file. {USE_OFFICIAL}"
        )
    return labels - 1


def _parse_class_names(data: bytes, where: str) -> tuple[str, ...]:
    try:
        names = tuple(line.strip() for line in data.decode("utf-8").splitlines() if line.strip())
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{where} is not UTF-8 text ({exc}); expected one class name per line. {USE_OFFICIAL}"
        ) from exc
    if len(names) != NUM_CLASSES:
        raise DatasetError(
            f"{where} names {len(names)} classes, expected {NUM_CLASSES} (one per line). "
            f"{USE_OFFICIAL}"
        )
    return names
