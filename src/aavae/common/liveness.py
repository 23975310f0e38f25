"""Is the process that opened an MLflow run or wrote a temporary file still running?

A PID alone cannot say (it is reused), so a process is (PID, host, start): the boot id and its
start ticks (Linux ``/proc``; elsewhere None, and only the PID is checked). A process on another
host (a shared data folder or store) is unknown, never gone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Liveness(Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"  # on another host: cannot be checked from here


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and ')')."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2:].split()


def process_start(pid: int) -> str | None:
    """``<boot id>:<start ticks>`` of process ``pid``, or None where /proc cannot tell."""
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        return None
    fields = _stat(pid)
    return f"{boot}:{fields[19]}" if fields else None  # field 22, starttime


@dataclass(frozen=True)
class ProcessRecord:
    """Who holds something: PID, host, and the process's start (None where unknown)."""

    pid: int
    host: str
    start: str | None

    @classmethod
    def current(cls) -> ProcessRecord:
        return cls(os.getpid(), socket.gethostname(), process_start(os.getpid()))

    def liveness(self) -> Liveness:
        """GONE: no such PID here, a zombie, or a later process's PID; UNKNOWN: another host."""
        if self.host != socket.gethostname():
            return Liveness.UNKNOWN
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return Liveness.GONE
        except PermissionError:
            pass  # exists, owned by another user
        if _stat(self.pid)[:1] == ["Z"]:  # killed, not yet reaped by its parent
            return Liveness.GONE
        now = process_start(self.pid)
        if self.start is not None and now is not None and now != self.start:
            return Liveness.GONE  # the PID was reused by a process started later
        return Liveness.ALIVE

    def describe(self) -> str:
        return f"PID {self.pid} on host {self.host}"


# -- temporary files: named for their writer, removed once it is gone ---------------------------

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<host>[A-Za-z0-9_]+)-")
# What checkpoint writes were named before writers were recorded with their host.
_LEGACY_CHECKPOINT = re.compile(r"^\.(?P<name>.+\.ckpt)\.(?P<pid>\d+)\.tmp$")


def _host_token() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())


def temporary_prefix(name: str) -> str:
    """``.<name>.tmp-<pid>-<host>-``: a temporary's name starts so, naming its writer."""
    return f".{name}.tmp-{os.getpid()}-{_host_token()}-"


def temporary_path(path: Path) -> Path:
    """This process's temporary file beside ``path`` (see :func:`temporary_prefix`)."""
    return path.with_name(temporary_prefix(path.name) + "write")


def remove_dead_temporaries(folders: Iterable[Path], only: str | None = None) -> list[Path]:
    """Remove (and return) the temporaries in ``folders`` (those for ``only``, if given) whose
    writer, a process of this host, is gone; a live writer's and another host's stay."""
    host, removed = _host_token(), []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.match(entry.name) or _LEGACY_CHECKPOINT.match(entry.name)
            if match is None or match.groupdict().get("host", host) != host or only not in (None, match["name"]):
                continue
            writer = ProcessRecord(int(match["pid"]), socket.gethostname(), None)
            if writer.liveness() is not Liveness.GONE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
