"""One pretraining per artifact root at a time.

Two pretrainings of the same configuration would write the same checkpoint folder, each
resuming from and overwriting the other's ``last.ckpt``. So a pretraining holds an OS file lock
(:mod:`filelock`) on ``<artifact root>/06_models/.pretrain.lock`` while it runs: a second is
refused at once. The OS releases it when its process ends, however it ends (SIGKILL too).
Beside it, ``.pretrain.lock.json`` says who holds it (PID, host, start time, MLflow run) for the
refusal's message; one left by a killed holder is named in a warning by the next pretraining.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from aavae.common.atomic import replaced_atomically

log = logging.getLogger(__name__)

LOCK_NAME = ".pretrain.lock"


class PretrainLocked(RuntimeError):
    """Another pretraining holds this project's data folder."""


class PretrainLock:
    """The lock of one artifact root."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.record_path = self.path.with_name(f"{self.path.name}.json")
        self._lock = FileLock(self.path, timeout=0)
        self._record: dict[str, Any] = {}

    @classmethod
    def for_root(cls, artifact_root: str | os.PathLike) -> PretrainLock:
        """The lock beside the checkpoints under an environment's artifact root (``data/``,
        ``data/<env>/``): environments train side by side, each one at a time."""
        return cls(Path(artifact_root) / "06_models" / LOCK_NAME)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PretrainLocked` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise PretrainLocked(self._refusal()) from None
        left = self._read_record()
        if left:
            log.warning("The previous pretraining in this project (%s) ended without releasing its "
                        "lock %s (it was killed); this run takes it.", _holder(left), self.path)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write_record({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                            "mlflow_run_id": None})
        atexit.register(self.release)  # Ctrl+C and SystemExit pass no pipeline hook

    def record_run(self, mlflow_run_id: str | None) -> None:
        """Add the MLflow run id to the holder's record once the run is open."""
        if self._lock.is_locked and mlflow_run_id and self._record.get("mlflow_run_id") != mlflow_run_id:
            self._write_record({**self._record, "mlflow_run_id": mlflow_run_id})

    def release(self) -> None:
        """Delete the record and let the lock go, if this process holds it."""
        if not self._lock.is_locked:
            return
        atexit.unregister(self.release)
        self.record_path.unlink(missing_ok=True)
        self._lock.release()

    def _write_record(self, record: dict[str, Any]) -> None:
        self._record = record
        with replaced_atomically(self.record_path) as temporary:  # a reader never sees half of it
            temporary.write_text(json.dumps(record))

    def _read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _refusal(self) -> str:
        record = self._read_record()
        if record is None:  # taken a moment ago: its holder has not written the record yet
            holder, what_to_do = "another process", "Wait for it to finish, then rerun."
        else:
            holder = _holder(record)
            where = "" if record.get("host") == socket.gethostname() else f" on host {record.get('host')}"
            what_to_do = f"Wait for it to finish, or stop it (kill {record.get('pid')}{where}), then rerun."
        return (f"Another pretraining is running in this project: {holder} (lock {self.path}). Two "
                f"would overwrite each other's checkpoints. {what_to_do}")


def _holder(record: dict[str, Any]) -> str:
    """``PID n on host h, started t, MLflow run r`` from a holder's record."""
    run = record.get("mlflow_run_id")
    return (f"PID {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
            f"{f', MLflow run {run}' if run else ''}")
