"""Files and folders written whole or not at all, with the modes the umask gives.

A temporary beside the final name (named for its writer, so the next run removes a killed
writer's: :func:`aavae.common.liveness.temporary_path`) renamed into place: an interrupted
write never leaves half a file, nor destroys the previous one. It is made with ``open()`` or
``mkdir()``, not ``mkstemp`` (0600, kept by the rename), so a teammate can read the model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from aavae.common.liveness import temporary_path


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to create (file or folder), which
    replaces ``path`` when the block ends without an error (a folder by two renames, the old
    one put back if the second fails); ``durable`` fsyncs it and its folder (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    _remove(temporary)  # left by an earlier process that had this PID
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        if temporary.is_dir() and path.exists():
            retired = path.with_name(f".{path.name}.old")
            _remove(retired)
            path.rename(retired)
            try:
                temporary.rename(path)
            except BaseException:
                retired.rename(path)  # the previous artifact back under its name
                raise
            _remove(retired)
        else:
            os.replace(temporary, path)
        if durable:
            _fsync(path.parent)
    finally:
        _remove(temporary)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
