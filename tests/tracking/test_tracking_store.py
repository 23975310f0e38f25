"""A SQLite MLflow store left half created by a killed run is replaced; a new one appears whole.

benchmarks/faults.py found it: a `kedro run` SIGKILLed while MLflow created the project's
store left a file whose every later open failed with "table datasets already exists".
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import sqlalchemy
from alembic import command
from mlflow.store.db.utils import _get_alembic_config
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from mlflow.tracking import MlflowClient

from aavae.tracking.store import prepare_sqlite_store, sqlite_path
from tests.conftest import copy_project, kedro

DATASETS_MIGRATION, BEFORE_IT = "7f2a7d5fae7d", "3500859a5d39"  # mlflow's "add datasets" step


def half_made_store(path: Path) -> None:
    """The store a kill leaves when it lands after MLflow's "add datasets" migration ran but
    before its revision was recorded (the migrations are not one transaction)."""
    url = f"sqlite:///{path}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, DATASETS_MIGRATION)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"UPDATE alembic_version SET version_num = '{BEFORE_IT}'"))
    engine.dispose()


def opens(path: Path) -> bool:
    """Whether MLflow opens the store; False only for the refusal faults.py found (a migration
    that finds its table made already); any other error is raised, not taken for a refusal."""
    try:
        MlflowClient(f"sqlite:///{path}").search_experiments()
    except sqlalchemy.exc.OperationalError as error:
        if "already exists" not in str(error):
            raise
        return False
    return True


def test_sqlite_paths_of_tracking_uris():
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////abs/store.db?timeout=5") == Path("/abs/store.db")
    assert sqlite_path("sqlite://") is None and sqlite_path("http://127.0.0.1:5000") is None
    assert sqlite_path(None) is None and sqlite_path("mlruns") is None


def test_a_half_made_store_is_moved_aside_and_created_anew(tmp_path, caplog):
    store = tmp_path / "mlflow.db"
    half_made_store(store)
    assert not opens(store), "the state faults.py found: MLflow cannot open it"
    prepare_sqlite_store(f"sqlite:///{store}")
    assert opens(store)
    (aside,) = tmp_path.glob("mlflow.db.incomplete-*")
    assert "half created" in caplog.text and str(aside) in caplog.text
    assert not list(tmp_path.glob(".mlflow.db.creating-*")), "no temporary store left"


def test_a_missing_store_is_created_whole_and_a_good_one_left_as_it_is(tmp_path):
    store = tmp_path / "sub" / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{store}")
    assert opens(store) and sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db"]
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    try:
        with mlflow.start_run() as run:
            mlflow.log_metric("m", 1.0)
    finally:
        mlflow.set_tracking_uri(None)
    before = store.stat().st_mtime_ns
    prepare_sqlite_store(f"sqlite:///{store}")
    assert store.stat().st_mtime_ns == before
    assert MlflowClient(f"sqlite:///{store}").get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_a_store_with_runs_is_never_moved_even_if_its_schema_is_behind(tmp_path):
    store = tmp_path / "mlflow.db"
    half_made_store(store)
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES (7, 'e', 'active')")
        db.execute("INSERT INTO runs (run_uuid, experiment_id, lifecycle_stage) VALUES ('r', 7, 'active')")
    prepare_sqlite_store(f"sqlite:///{store}")
    assert store.exists() and not list(tmp_path.glob("mlflow.db.incomplete-*"))


KILLED_MID_TRANSACTION = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")  # spill changed pages into the file: the journal is hot
db.execute("BEGIN IMMEDIATE")
for n in range(2000):
    db.execute("INSERT INTO experiments (name, lifecycle_stage) VALUES (?, 'active')", (f"x{n}",))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_store_killed_mid_transaction_is_rolled_back_not_refused(tmp_path):
    """faults.py, trial 14 of 20: a kill during a write left mlflow.db-journal behind."""
    store = tmp_path / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{store}")
    subprocess.run([sys.executable, "-c", KILLED_MID_TRANSACTION, str(store)], check=False)
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0, "a hot journal, as the kill leaves it"
    prepare_sqlite_store(f"sqlite:///{store}")
    assert opens(store) and not list(tmp_path.glob("mlflow.db.incomplete-*"))
    names = [e.name for e in MlflowClient(f"sqlite:///{store}").search_experiments()]
    assert names == ["Default"], "the killed transaction was rolled back"


def test_a_file_that_is_no_database_is_named(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"not a database, " * 64)
    with pytest.raises(RuntimeError, match="mlflow.db' is not a readable SQLite database"):
        prepare_sqlite_store(f"sqlite:///{store}")


@pytest.mark.slow
def test_kedro_run_on_a_store_a_killed_first_run_left_half_made(tmp_path):
    project = copy_project(tmp_path)
    half_made_store(project / "mlflow.db")
    kedro(project, "--pipeline", "ingest", "--env", "test")
    assert opens(project / "mlflow.db") and len(list(project.glob("mlflow.db.incomplete-*"))) == 1



HOLD_OPEN = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])  # a process with the store open, as MLflow creating it is
print("open", flush=True)
sys.stdin.readline()  # held until the test lets go
"""


@pytest.fixture
def held_open_half_made_store(tmp_path):
    """A half-made store that another live process has open (what `mlflow ui` creating it
    looks like to a run starting meanwhile), and that process."""
    store = tmp_path / "mlflow.db"
    half_made_store(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(store)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    yield store, holder
    holder.kill()
    holder.wait()


def test_a_half_made_store_that_a_live_process_finishes_is_left_to_it(tmp_path, held_open_half_made_store,
                                                                      monkeypatch):
    import shutil
    import time
    from types import SimpleNamespace

    from aavae.tracking import store as tracking_store

    store, _ = held_open_half_made_store
    complete = tmp_path / "complete.db"
    prepare_sqlite_store(f"sqlite:///{complete}")
    # The other process finishes the store while this one waits for it (its first pause).
    finishing = SimpleNamespace(monotonic=time.monotonic, sleep=lambda _: shutil.copyfile(complete, store))
    monkeypatch.setattr(tracking_store, "time", finishing)
    prepare_sqlite_store(f"sqlite:///{store}")
    assert not list(tmp_path.glob("mlflow.db.incomplete-*")), "nothing moved aside under it"
    assert opens(store)


def test_a_store_held_open_unfinished_is_refused_naming_the_process(tmp_path, held_open_half_made_store,
                                                                    monkeypatch):
    from aavae.tracking import store as tracking_store

    store, holder = held_open_half_made_store
    monkeypatch.setattr(tracking_store, "CREATOR_WAIT_SECONDS", 1.0)
    with pytest.raises(RuntimeError, match=rf"is being created by another process \(PID {holder.pid} "):
        prepare_sqlite_store(f"sqlite:///{store}")
    assert store.exists() and not list(tmp_path.glob("mlflow.db.incomplete-*"))
