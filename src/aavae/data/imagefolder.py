"""Image folders: ``<split>/<class>/<image>`` in a folder, ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip``.

torchvision's ``ImageFolder`` layout with a level for the split, maybe inside one top-level
folder. The listing is planned first (:mod:`aavae.data.layout`), so a layout mistake is
reported before anything is decoded; then the files are streamed in storage order (a
compressed tar is decompressed once) and decoded by a thread pool (Pillow releases the GIL;
JPEGs to be shrunk decode at reduced scale). Each image is written at its row of a staged
``.npy`` file per split (:mod:`aavae.data.staging`), so memory holds only the images in flight
(:data:`MAX_BYTES_IN_FLIGHT` encoded, an image decoded per thread), not the set.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from aavae.data.archive import Entry, Source, file_digests, open_source
from aavae.data.card import ReadResult
from aavae.data.errors import DatasetError
from aavae.data.fit import RESIZE_POLICIES, ResizePolicy, fit_image, upright_size
from aavae.data.imageset import ImageSet
from aavae.data.layout import EXPECTED_LAYOUT, FolderLayout, plan_layout
from aavae.data.staging import NpyRows, map_npy, new_staging_folder, staging_root

logger = logging.getLogger(__name__)

# Pillow may only identify these formats: other plugins (EPS, for one) run external programs.
# (Multi-picture JPEGs, MPO, open through the JPEG plugin.)
PIL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
BadImagePolicy = Literal["error", "skip"]
BAD_IMAGE_POLICIES = ("error", "skip")
BATCH_SIZE = 256  # images per decoding task: amortises the cost of handing work to a thread
BATCH_BYTES = 16 * 1024**2  # ... or fewer, once their encoded bytes reach this
MAX_BYTES_IN_FLIGHT = 256 * 1024**2  # encoded bytes read but not yet decoded, at most (roughly)


def read_imagefolder(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    resize: ResizePolicy = "resize_crop",
    on_bad_image: BadImagePolicy = "error",
    workers: int | None = None,
    staging: str | os.PathLike | None = None,
) -> ReadResult:
    """Every split of an image folder tree as ImageSets of one size, each a read-only map of
    a staged .npy file (deleted unless ``save_imageset`` moves it into place).

    ``image_size``: the square side (None keeps the images' own size, which all must share);
    ``resize``: :mod:`aavae.data.fit`'s policy; ``on_bad_image``: ``"error"`` stops at an
    undecodable image, ``"skip"`` lists it in ``ReadResult.skipped``; ``workers``: decoding
    threads (default: this process's CPUs); ``staging``: where files are staged (default
    :func:`aavae.data.staging.staging_root`; on the filesystem saved to, saving is a rename).
    """
    _check_arguments(image_size, resize, on_bad_image, workers)
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"Image folder path '{path}' does not exist. Expected {EXPECTED_LAYOUT}."
        )
    root = staging_root() if staging is None else Path(staging)
    decoder: _Decoder | None = None
    try:
        with open_source(path) as source:
            layout = plan_layout(source.entries(), source)
            size = None if image_size is None else (image_size, image_size)
            decoder = _Decoder(layout, size, resize, on_bad_image, source, root)
            _stream_and_decode(source, decoder, workers or _available_cpus())
            splits = decoder.results()
        archive_sha256 = None if path.is_dir() else file_digests(path)["sha256"]
        return ReadResult(splits, str(path), "imagefolder", archive_sha256, sorted(decoder.skipped))
    except BaseException:
        if decoder is not None:
            decoder.discard()
        raise


def _check_arguments(
    image_size: object, resize: object, on_bad_image: object, workers: object
) -> None:
    """The pipeline's arguments come validated from ``dataset.*``; a notebook's do not."""
    if image_size is not None and (
        not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
    ):
        raise DatasetError(
            f"image_size={image_size!r} (dataset.image_size): expected a positive integer, or "
            "None (null) to keep the images' size."
        )
    if resize not in RESIZE_POLICIES:
        raise DatasetError(
            f"resize={resize!r} (dataset.resize): expected one of {', '.join(RESIZE_POLICIES)}."
        )
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DatasetError(
            f"on_bad_image={on_bad_image!r} (dataset.on_bad_image): expected one of "
            f"{', '.join(BAD_IMAGE_POLICIES)}."
        )
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise DatasetError(
            f"workers={workers!r}: expected a positive integer, or None for all CPUs."
        )


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1



class _Decoder:
    """Decodes encoded images into one .npy file per split, created at its final size."""

    def __init__(
        self,
        layout: FolderLayout,
        size: tuple[int, int] | None,
        resize: ResizePolicy,
        on_bad_image: BadImagePolicy,
        source: Source,
        stage_in: Path,
    ) -> None:
        self.layout = layout
        self.resize = resize
        self.on_bad_image = on_bad_image
        self.source = source
        self.stage_in = stage_in  # where the staging folder is made
        self.exact = size is None  # keep images as they are: all must share the first one's size
        self.slots = {
            name: (split, index)
            for split, files in layout.splits.items()
            for index, (name, _) in enumerate(files)
        }
        self.decoded = {
            split: np.zeros(len(files), dtype=bool) for split, files in layout.splits.items()
        }
        self.skipped: list[str] = []
        self.size: tuple[int, int] | None = None  # (width, height)
        self.folder: Path | None = None  # the staging folder, once created
        self.files: dict[str, NpyRows] = {}
        if size is not None:
            self._allocate(size)

    def wants(self, entry: Entry) -> bool:
        return entry.name in self.slots

    @property
    def ready(self) -> bool:
        return self.size is not None

    def observe(self, data: bytes) -> None:
        """Without a target size, take the first readable image's size as the size."""
        if self.size is None:
            try:
                with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
                    size = upright_size(image)
            except Exception:  # an unreadable image: its own decoding reports it
                return
            self._allocate(size)

    def _allocate(self, size: tuple[int, int]) -> None:
        width, height = size
        count = sum(len(files) for files in self.layout.splits.values())
        what = f"{self.source.describe()}: {count:,} images of {width}x{height}"
        self.folder = new_staging_folder(self.stage_in, count * width * height * 3, what)
        try:
            for split, files in self.layout.splits.items():
                shape = (len(files), height, width, 3)
                self.files[split] = NpyRows(self.folder / f"{split}.npy", shape)
        except BaseException:
            self.discard()
            raise
        self.size = size

    def decode_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for name, data in batch:
            split, index = self.slots[name]
            try:
                image = self._decode(name, data)
            except _SizeMismatch:
                raise
            except Exception as exc:  # Pillow raises many types for damaged files
                if self.on_bad_image == "error":
                    raise DatasetError(
                        f"Cannot decode image {self.source.describe(name)}: {_reason(exc)}. "
                        "Fix or remove the file, or add --params dataset.on_bad_image=skip to "
                        "leave it out (the dataset card lists the files skipped)."
                    ) from exc
                self.skipped.append(name)
                continue
            # one write per image: a system call costs little beside decoding the image
            self.files[split].write(index, image)
            self.decoded[split][index] = True

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        assert self.size is not None, "batches are decoded only once the size is known"
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as image:
            width, height = upright_size(image)
            if self.exact and (width, height) != self.size:
                raise _SizeMismatch(
                    f"Image {self.source.describe(name)} is {width}x{height}, but the "
                    f"first image is {self.size[0]}x{self.size[1]}: set --params "
                    "dataset.image_size=<side> to bring all images to one size."
                )
            return fit_image(image, self.size, self.resize)

    def results(self) -> dict[str, ImageSet]:
        """The image sets, each a read-only map of its file, undecodable rows squeezed out."""
        class_names = self.layout.class_names
        labels_of = {}
        for split, files in self.layout.splits.items():
            kept = self.decoded[split]
            all_labels = np.fromiter((label for _, label in files), np.int64, count=len(files))
            labels_of[split] = all_labels[kept]
            counts = np.bincount(labels_of[split], minlength=len(class_names))
            for name, count in zip(class_names, counts, strict=True):
                if not count:
                    raise DatasetError(
                        f"Class '{name}' of split '{split}' of {self.source.describe()} has no "
                        "readable images: all were skipped as undecodable (the log names "
                        "them). Replace the files, or remove the class from every split."
                    )
        splits = {}
        for split, rows in self.files.items():
            if not self.decoded[split].all():
                rows.compact(self.decoded[split])
            rows.close()
            images = map_npy(rows.path, staged=True)
            splits[split] = ImageSet(images, labels_of[split], class_names, split)
        return splits

    def discard(self) -> None:
        """Delete the staging folder and everything in it (the read failed)."""
        for rows in self.files.values():
            rows.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class _SizeMismatch(DatasetError):
    """An image of another size than the first while sizes are kept: a setting, not a bad file."""


def _reason(exc: Exception) -> str:
    """Why an image could not be decoded, without Pillow's ``<_io.BytesIO object at 0x...>``."""
    if isinstance(exc, UnidentifiedImageError):
        return (
            "its bytes are not a JPEG, PNG, BMP or WebP image Pillow can read "
            "(a damaged file, or another format under an image's extension)"
        )
    if isinstance(exc, DatasetError):  # our own words already
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _stream_and_decode(source: Source, decoder: _Decoder, workers: int) -> None:
    """Read files in storage order here while ``workers`` threads decode batches (of
    BATCH_SIZE images or BATCH_BYTES); reading waits while more than 2 x ``workers`` batches or
    MAX_BYTES_IN_FLIGHT bytes are undecoded."""
    pending: deque[tuple[Future[None], int]] = deque()
    in_flight = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        try:
            batch: list[tuple[str, bytes]] = []
            batch_bytes = 0
            for entry, stream in source.files(decoder.wants):
                data = stream.read()
                decoder.observe(data)
                batch.append((entry.name, data))
                batch_bytes += len(data)
                full = len(batch) >= BATCH_SIZE or batch_bytes >= BATCH_BYTES
                if full and decoder.ready:
                    pending.append((pool.submit(decoder.decode_batch, batch), batch_bytes))
                    in_flight += batch_bytes
                    batch, batch_bytes = [], 0
                    while pending and (
                        len(pending) > 2 * workers or in_flight > MAX_BYTES_IN_FLIGHT
                    ):
                        future, size = pending.popleft()
                        future.result()
                        in_flight -= size
            if batch:
                pending.append((pool.submit(decoder.decode_batch, batch), batch_bytes))
            while pending:
                pending.popleft()[0].result()
        except BaseException:
            for future, _ in pending:
                future.cancel()
            raise
