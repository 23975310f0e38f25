"""One pretraining per project data folder at a time.

Two pretrainings of the same configuration would write the same checkpoint folder, each
resuming from and overwriting the other's ``last.ckpt``. The lock is a small JSON file,
``data/06_models/.pretrain.lock`` (pid, host, process start, start time, MLflow run id):

* taken atomically: the record is written in full to a temporary file, which is then
  hard-linked to the lock's name; like ``O_CREAT | O_EXCL``, that fails when the lock exists,
  and a reader never sees a half-written record (``O_CREAT | O_EXCL`` is the fallback where
  links are refused);
* held: a second run is refused at once, with the holder's PID and host;
* stale: the holder was on this host and is gone (see :mod:`aavae.common.liveness`), so the lock is
  taken over, with a warning. A holder on another host cannot be checked and is never
  taken over: the message says which file to delete once that process is known to be gone;
* released when the run ends, fails, is interrupted (Ctrl+C; SIGTERM during training, which
  the engine turns into an exit) or the interpreter exits; a SIGKILL leaves it, stale.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aavae.common.liveness import Liveness, ProcessRecord

log = logging.getLogger(__name__)

LOCK_NAME = ".pretrain.lock"
_TAKEOVER_ATTEMPTS = 3


class PretrainLocked(RuntimeError):
    """Another pretraining holds this project's data folder."""


class PretrainLock:
    """The lock file of one data folder; :meth:`acquire`, :meth:`record_run`, :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.me = ProcessRecord.current()
        self.held = False

    @classmethod
    def for_project(cls, project_path: str | os.PathLike) -> PretrainLock:
        """The lock beside the checkpoints of the project at ``project_path``."""
        return cls(Path(project_path) / "data" / "06_models" / LOCK_NAME)

    def acquire(self, mlflow_run_id: str | None = None) -> None:
        """Take the lock, or raise :class:`PretrainLocked` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = self._record(mlflow_run_id, started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for _ in range(_TAKEOVER_ATTEMPTS):
            if self._create(record):
                self.held = True
                atexit.register(self.release)
                return
            seen = self._read_bytes()
            if seen is None:
                continue  # released between our attempt and the read: try again
            holder = self._holder(seen)
            liveness = holder.liveness()
            if liveness is not Liveness.GONE:
                raise PretrainLocked(self._refusal(seen, holder, liveness))
            self._take_over(seen, holder)
        raise PretrainLocked(
            f"Could not take the pretraining lock {self.path}: other runs kept taking it. "
            "Wait for them to finish, then rerun."
        )

    def record_run(self, mlflow_run_id: str | None) -> None:
        """Add the MLflow run id to the record once the run is open (replaced atomically)."""
        if not self.held or not mlflow_run_id:
            return
        current = self._read_json()
        if current is None or not self._is_mine(current):
            return
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({**current, "mlflow_run_id": mlflow_run_id}))
        os.replace(temporary, self.path)

    def release(self) -> None:
        """Delete the lock if this process holds it; anyone else's is left alone."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        current = self._read_json()
        if current is not None and self._is_mine(current):
            self.path.unlink(missing_ok=True)

    # -- internals -------------------------------------------------------------------------

    def _record(self, mlflow_run_id: str | None, started: str) -> dict[str, Any]:
        return {**self.me.to_dict(), "started": started, "mlflow_run_id": mlflow_run_id}

    def _create(self, record: dict[str, Any]) -> bool:
        """Create the lock holding ``record``; False when it already exists."""
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record))
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            return self._create_exclusive(record)
        finally:
            temporary.unlink(missing_ok=True)

    def _create_exclusive(self, record: dict[str, Any]) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(record))
        return True

    def _read_bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _read_json(self) -> dict[str, Any] | None:
        seen = self._read_bytes()
        try:
            return json.loads(seen) if seen is not None else None
        except ValueError:
            return None

    def _is_mine(self, record: dict[str, Any]) -> bool:
        return (record.get("pid"), record.get("host")) == (self.me.pid, self.me.host)

    def _holder(self, seen: bytes) -> ProcessRecord:
        try:
            return ProcessRecord.from_dict(json.loads(seen))
        except (ValueError, KeyError, TypeError) as error:
            raise PretrainLocked(
                f"The pretraining lock {self.path} cannot be read ({error}): expected JSON with "
                "pid and host. If no pretraining is running in this project, delete that file "
                "and rerun."
            ) from None

    def _refusal(self, seen: bytes, holder: ProcessRecord, liveness: Liveness) -> str:
        details = json.loads(seen)
        run = details.get("mlflow_run_id")
        since = f", started {details['started']}" if details.get("started") else ""
        if liveness is Liveness.ALIVE:
            what_to_do = f"Wait for it to finish, or stop it (kill {holder.pid}), then rerun."
        else:
            what_to_do = (f"It runs on another host, so this one cannot check it: wait for it to "
                          f"finish, or if that process is gone, delete {self.path} and rerun.")
        return (
            f"Another pretraining is running in this project: {holder.describe()}{since}"
            f"{f', MLflow run {run}' if run else ''} (lock {self.path}). Two would overwrite each "
            f"other's checkpoints. {what_to_do}"
        )

    def _take_over(self, seen: bytes, holder: ProcessRecord) -> None:
        """Remove a stale lock, unless another run replaced it since it was read."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another run removed it first
        if aside.read_bytes() != seen:  # a live lock, taken after ours was read: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        run = json.loads(seen).get("mlflow_run_id")
        log.warning("Took over the pretraining lock %s: its holder, %s%s, is gone.", self.path,
                    holder.describe(), f" (MLflow run {run})" if run else "")
