"""Files and folders written whole or not at all, with the modes the umask gives.

Every artifact, checkpoint and record goes to a temporary beside its final name (named for its
writer, :func:`aavae.common.liveness.temporary_path`, so the next run removes it if the writer
was killed) and is renamed into place: an interrupted write never leaves half a file under the
real name, and never destroys the previous one. The temporary is made by the caller with plain
``open()`` or ``mkdir()``, not ``mkstemp``/``mkdtemp`` (private, 0600/0700, and a rename keeps
the mode), so the artifact gets the permissions the umask gives any new file: under the usual
0022 a teammate sharing the data folder can read the model, as they can a checkpoint.
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
    """Yield a temporary path beside ``path`` for the caller to create (a file or a folder);
    when the block ends without an error it replaces ``path``, else it is removed.

    A folder replaces an existing one by two renames (the old one aside to ``.<name>.old``,
    the new one in, the old one back if that fails). ``durable``: fsync the file and the folder
    holding it, so the rename survives a power cut (checkpoints).
    """
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
