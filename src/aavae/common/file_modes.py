"""Artifacts get the permissions the umask gives any new file, whatever wrote them.

Every artifact is written to a temporary beside its final name and renamed into place (an
interrupted write never leaves half a file). ``tempfile.mkstemp`` creates that temporary
0600 and ``tempfile.mkdtemp`` 0700, private on purpose (a temporary in a shared /tmp must not
be readable by others), and a rename keeps the mode: so ``aavae_model.pt``, the feature
``.npz`` files and the ``03_primary/images_*`` folders came out private whatever the umask,
while checkpoints, written with ``open()``, were 0644 under the usual 0022, and a teammate
sharing the data folder could read the checkpoints but not the model.
:func:`follow_umask` gives a temporary the mode ``open()``/``mkdir()`` would have given it,
just before it is renamed into place.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc``)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it; the lock keeps this module's readers
    # from seeing each other's temporary 0 (another thread creating a file meanwhile could).
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file or a folder) the mode a new one gets from ``open()``/``mkdir()``:
    0666 or 0777 less the umask (0644 / 0755 under the usual 0022, 0600 / 0700 under 0077)."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~current_umask())
