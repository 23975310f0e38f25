"""The project's SQLite MLflow store: created whole or not at all.

MLflow creates a SQLite store's tables in a chain of migrations that is not one transaction: a
process killed meanwhile (the first ``kedro run`` of a fresh project, SIGKILLed in its first
seconds: ``benchmarks/faults.py`` hit it) leaves a file MLflow never opens again (``table ...
already exists``). So :func:`prepare_sqlite_store` creates a missing store under a temporary
name and renames it into place, and moves aside a half-made one (schema short of the installed
MLflow's, no run in it: nothing to lose) to create it anew; unless a live process has it open
(``mlflow ui`` creating it): then it waits for it, and refuses, naming it, if it does not finish.
A store with runs and an older schema is left to ``mlflow db upgrade``; other URIs are not touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (relative to the working directory, as
    SQLAlchemy reads it), or None for any other kind of store."""
    if not tracking_uri or not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = tracking_uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def anchored_at(tracking_uri: str | None, project_path: Path) -> str | None:
    """A ``sqlite:///`` URI whose path is relative, made to name the file in the project folder:
    SQLAlchemy reads it from the working directory (a notebook in ``notebooks/`` made its own)."""
    path = sqlite_path(tracking_uri)
    if path is None or path.is_absolute():
        return tracking_uri
    return f"{SQLITE_PREFIX}{Path(project_path).resolve()}/{tracking_uri[len(SQLITE_PREFIX):]}"


def prepare_sqlite_store(tracking_uri: str | None) -> None:
    """Make sure the store of ``tracking_uri`` opens: create it whole, or replace a half-made one."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    if path.exists():
        schema, runs = _schema_and_runs(path)
        if schema == _latest_schema() or runs:
            return
        if _another_process_finishes_it(path):  # e.g. `mlflow ui` creating it right now
            return
        aside = path.with_name(f"{path.name}.incomplete-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        _forget_engines(path)
        path.rename(aside)
        log.warning(
            "The MLflow store %s was left half created (schema %s, no runs), most likely by a run "
            "killed while creating it; moved it to %s and creating it anew.", path, schema or "none", aside)
    _create(path)


#: How long a run waits for another process that is creating the store (``mlflow ui``).
CREATOR_WAIT_SECONDS = 60.0


def _another_process_finishes_it(path: Path) -> bool:
    """Whether a live process that has the store open (``mlflow ui``, another run starting)
    completes its schema within :data:`CREATOR_WAIT_SECONDS`; if it holds it unfinished, refused."""
    holders = _processes_holding(path)
    if not holders:
        return False
    deadline = time.monotonic() + CREATOR_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.5)
        schema, runs = _schema_and_runs(path)
        if schema == _latest_schema() or runs:
            return True
        holders = _processes_holding(path)
        if not holders:
            return False  # it let go without finishing: half made after all
    raise RuntimeError(
        f"The MLflow store '{path}' is being created by another process ({'; '.join(holders)}), "
        f"and it has not finished in {CREATOR_WAIT_SECONDS:.0f} s. Wait for it (an `mlflow ui` starting "
        "up), or stop it, then rerun."
    )


def _processes_holding(path: Path) -> list[str]:
    """Other processes of this host with ``path`` open, as ``PID n (command)`` (Linux /proc;
    elsewhere none can be seen)."""
    target, found = str(path.resolve()), []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"PID {proc.name} ({command[:80]})")
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def _schema_and_runs(path: Path) -> tuple[str | None, int]:
    """The store's schema revision (None if it has none) and how many runs it holds."""
    try:
        # Read-write, not read-only: a process killed mid-transaction leaves a hot journal,
        # which SQLite rolls back on this first connection (a read-only one cannot).
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = db.execute("SELECT version_num FROM alembic_version").fetchone() \
                if "alembic_version" in tables else None
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as exc:
        raise RuntimeError(
            f"The MLflow store '{path}' is not a readable SQLite database ({exc}). Move it aside "
            "(the next run creates a new one), or point mlflow.yml's server.mlflow_tracking_uri "
            "at the store you meant."
        ) from exc
    return (row[0] if row else None), runs


def _forget_engines(path: Path) -> None:
    """Drop MLflow's cached connections to ``path`` (a notebook that failed to open it earlier
    holds some): they would go on reading the file moved aside."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    for uri in list(engines):
        cached = sqlite_path(uri)
        if cached is not None and cached.resolve() == path.resolve():
            engines.pop(uri).dispose()


def _latest_schema() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision  # alembic: import on use

    return _get_latest_schema_revision()


def _create(path: Path) -> None:
    """Create the store under a temporary name beside ``path``, then link it into place."""
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.creating-{os.getpid()}")
    building.unlink(missing_ok=True)
    try:
        # MLflow's own constructor, as kedro-mlflow would call it: same tables, same default
        # experiment and artifact root.
        store = _get_sqlalchemy_store(f"{SQLITE_PREFIX}{building}", None)
        store.engine.dispose()
        try:
            os.link(building, path)  # never over a store another process just created
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(building, path)
    finally:
        building.unlink(missing_ok=True)
