"""Images decoded straight into .npy files on disk, so ingesting never holds a whole set in RAM
(200,000 images of 96 px are 5.5 GB).

Each decoded image is written at its row of a ``.npy`` file made at its final shape, with
positioned writes (``os.pwrite``): the kernel owns the written pages, which are no part of the
process's resident set, as pages dirtied through a memory map would be. The files are staged
under ``data/02_intermediate`` (the project root's, where ``kedro run`` starts): on the
catalog's filesystem, so saving is a rename, and out of ``/tmp``, often a RAM-backed tmpfs.

A staged file belongs to the read-only memory map the reader returns (:func:`map_npy`):
:func:`place_npy` moves it into place when the set is saved, and it is deleted when its map is
collected unsaved; a failed reader deletes its folder, and a killed one's is removed by the
next reader or ``kedro run`` (:func:`aavae.common.liveness.remove_dead_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aavae.common.liveness import remove_dead_temporaries, temporary_prefix
from aavae.data.errors import DatasetError

STAGING_LAYER = Path("data") / "02_intermediate"
STAGING_NAME = "aavae-staging"  # folders .aavae-staging.tmp-<pid>-<host>-*: common.liveness's temporaries
CHUNK_BYTES = 8 * 1024**2  # bytes one read or write of a whole-file pass moves at a time
GiB = 1024**3


def staging_root() -> Path:
    """``data/02_intermediate`` in a Kedro project's root; elsewhere (a notebook) the system's
    temporary folder, so reading never creates ``data/`` where nobody asked for it."""
    if Path("data").is_dir():
        return STAGING_LAYER
    return Path(tempfile.gettempdir())


def new_staging_folder(root: Path, needed_bytes: int, what: str) -> Path:
    """A fresh staging folder under ``root`` with room for ``needed_bytes`` (``what`` needs it),
    once killed processes' folders there are removed (they would fill the disk unseen)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries([root], only=STAGING_NAME)  # root may be the system's /tmp
        free = shutil.disk_usage(root).free
    except OSError as exc:
        raise DatasetError(
            f"Cannot create a staging folder for decoded images in '{root}': {exc}. Run from "
            "a folder where data/02_intermediate can be written (the project root), or pass "
            "staging=<writable folder>."
        ) from exc
    if needed_bytes > free:
        raise DatasetError(
            f"{what} need {readable_size(needed_bytes)} of disk space in '{root.absolute()}' (where decoded "
            f"images are staged), but only {readable_size(free)} are free. Free some space, set "
            "a smaller --params dataset.image_size=<side>, or ingest fewer images."
        )
    folder = tempfile.mkdtemp(prefix=temporary_prefix(STAGING_NAME), dir=root)
    return Path(folder).absolute()  # a later chdir moves nothing


def readable_size(size: int) -> str:
    """Bytes in the unit that shows them: ``512 B``, ``3.4 MB``, ``1.2 GiB``."""
    if size >= GiB:
        return f"{size / GiB:,.1f} GiB"
    if size >= 1024**2:
        return f"{size / 1024**2:,.1f} MB"
    return f"{size / 1024:,.1f} kB" if size >= 1024 else f"{size} B"


# -- writing rows -------------------------------------------------------------------------------


def npy_header(shape: tuple[int, ...], dtype: npt.DTypeLike) -> bytes:
    """The .npy header (format 1.0) of a C-order array. numpy pads it for any length of the
    first axis, so a file's shape can shrink in place (:meth:`NpyRows.compact`)."""
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    )
    return buffer.getvalue()


class NpyRows:
    """A .npy file of a known final shape (sparse until written), written row by row in any
    order from several threads: ``os.pwrite`` takes its own offset, so they need no lock."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: npt.DTypeLike = np.uint8) -> None:
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        header = npy_header(self.shape, self.dtype)
        self.header_bytes = len(header)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # as open() would
        try:
            self._write_at(0, header)
            os.ftruncate(self._fd, self.header_bytes + self.shape[0] * self.row_bytes)
        except BaseException:
            self.close()
            raise

    def write(self, index: int, row: np.ndarray) -> None:
        self._write_at(self.header_bytes + index * self.row_bytes, np.ascontiguousarray(row))

    def _write_at(self, offset: int, buffer: bytes | np.ndarray) -> None:
        data = memoryview(buffer).cast("B")
        try:
            while len(data):  # a short write is legal: write the rest
                count = os.pwrite(self._fd, data, offset)
                data, offset = data[count:], offset + count
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: OSError) -> DatasetError:
        advice = (
            "Free some disk space there, or set a smaller --params dataset.image_size=<side>."
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "Check that the folder is writable and the disk healthy."
        )
        return DatasetError(
            f"Cannot write decoded images to '{self.path}' ({self.shape[0]:,} rows of "
            f"{self.row_bytes:,} bytes): {exc}. {advice}"
        )

    def compact(self, kept: np.ndarray) -> None:
        """Keep only the rows where ``kept`` is true, in order, moving them chunk by chunk on
        disk (towards the start only, each chunk read before it is written), then cut the file
        and rewrite its header (of the same length)."""
        chunk_rows = max(1, CHUNK_BYTES // max(1, self.row_bytes))
        rows = np.flatnonzero(kept)
        # runs of consecutive kept rows: (first source row, count)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        target = 0
        try:
            for run in np.split(rows, breaks) if len(rows) else []:
                first, count = int(run[0]), len(run)
                if first != target:
                    for offset in range(0, count, chunk_rows):
                        n = min(chunk_rows, count - offset)
                        data = os.pread(
                            self._fd, n * self.row_bytes,
                            self.header_bytes + (first + offset) * self.row_bytes,
                        )
                        self._write_at(self.header_bytes + (target + offset) * self.row_bytes, data)
                target += count
            os.ftruncate(self._fd, self.header_bytes + target * self.row_bytes)
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.shape = (target, *self.shape[1:])
        self._write_at(0, npy_header(self.shape, self.dtype))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- memory maps of whole .npy files, and moving them into place ---------------------------------


@dataclass
class _Mapped:

    path: Path
    identity: tuple[int, int]  # (st_dev, st_ino) of the file mapped
    shape: tuple[int, ...]
    staged: bool  # a staged file: this map owns it, so saving may move it, and dropping deletes it
    pid: int  # the process that mapped it: a forked child dropping its copy deletes nothing


_MAPPED: dict[int, _Mapped] = {}  # id(map) -> record, dropped when the map is collected
_MAPPED_LOCK = threading.Lock()


def map_npy(path: Path, *, staged: bool) -> np.memmap:
    """A read-only memory map of the whole .npy file at ``path``, remembered with the file's
    device and inode, so :func:`npy_file_of` can tell the path still holds the bytes mapped.
    With ``staged=True`` the map owns the file: it is deleted (and its staging folder once
    empty) when the map is collected, unless :func:`place_npy` moved it into place first."""
    before = os.stat(path)
    images = np.load(path, mmap_mode="r")
    after = os.stat(path)
    identity = (after.st_dev, after.st_ino)
    if (before.st_dev, before.st_ino) != identity:  # replaced while mapping: do not vouch for it
        return images
    key = id(images)
    with _MAPPED_LOCK:
        _MAPPED[key] = _Mapped(Path(path).absolute(), identity, images.shape, staged, os.getpid())
    weakref.finalize(images, _forget, key)
    return images


def _forget(key: int) -> None:
    with _MAPPED_LOCK:
        record = _MAPPED.pop(key, None)
    if record is not None and record.staged and record.pid == os.getpid():
        with contextlib.suppress(OSError):
            if _identity(record.path) == record.identity:
                record.path.unlink()
        _remove_if_empty(record.path.parent)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _remove_if_empty(folder: Path) -> None:
    if folder.name.startswith(f".{STAGING_NAME}.tmp-"):
        with contextlib.suppress(OSError):
            folder.rmdir()


def npy_file_of(array: np.ndarray) -> Path | None:
    """The .npy file a :func:`map_npy` map ``array`` covers whole and that still holds the
    bytes mapped, or None (a view of part of a file, a file replaced since, another array)."""
    record = _MAPPED.get(id(array))
    if record is None or not isinstance(array, np.memmap) or array.shape != record.shape:
        return None
    if _identity(record.path) != record.identity:
        return None
    return record.path


def place_npy(array: np.ndarray, destination: Path) -> bool:
    """Put the .npy file ``array`` maps whole at ``destination`` without copying it through
    memory: a staged file is moved, another's linked (copied across filesystems); False when
    ``array`` maps no whole .npy file and the caller must write it."""
    source = npy_file_of(array)
    if source is None:
        return False
    record = _MAPPED[id(array)]
    if record.staged:
        try:
            os.rename(source, destination)
        except OSError:  # another filesystem: copy, then drop the staged file
            shutil.copyfile(source, destination)
            source.unlink()
        record.staged = False  # no longer ours to delete
        record.path, record.identity = destination, _identity(destination) or record.identity
        _remove_if_empty(source.parent)
        return True
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
    return True


def relocated(array: np.ndarray, path: Path) -> None:
    """Record that the file ``array`` maps now lies at ``path`` (its folder was renamed)."""
    record = _MAPPED.get(id(array))
    if record is not None and _identity(path) == record.identity:
        record.path = path


def file_chunks(path: Path, offset: int, size: int) -> Iterator[memoryview]:
    """``size`` bytes of the file at ``path`` from ``offset``, in chunks read into one buffer
    (reading through the memory map would make every page part of the resident memory)."""
    buffer = memoryview(bytearray(min(CHUNK_BYTES, max(size, 1))))
    with open(path, "rb", buffering=0) as stream:
        stream.seek(offset)
        left = size
        while left > 0:
            count = stream.readinto(buffer[: min(len(buffer), left)])
            if not count:
                raise DatasetError(
                    f"'{path}' ended {left:,} bytes early while it was read back: it was "
                    "changed or cut by something else. Run the ingest again."
                )
            left -= count
            yield buffer[:count]
