"""Shared fixtures: a throw-away copy of the project to run real `kedro run`s in.

The builders themselves live in ``tests/helpers/project.py`` (usable without pytest, by the
benchmarks); they are re-exported here, where the test files import them from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.tracking.fluent as mlflow_fluent
import pytest
import torch

from tests.helpers.project import (  # noqa: F401 - re-exported for the test files
    DATA_LAYERS,
    PROJECT_ROOT,
    SHARED_DATASETS,
    copy_project,
    kedro,
    project_runs,
)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers: each gets its share of the cores for torch, and so do the
    # processes it starts (torch's threads spin for a core, and slow tenfold beside a busy one).
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    torch.set_num_threads(_share)


@pytest.fixture(autouse=True)
def _environment_and_tracking_store_stay_in_their_test() -> Iterator[None]:
    """What a test sets in ``os.environ`` or points MLflow at ends with it. ``set_tracking_uri``,
    ``set_experiment`` and an in-process Kedro session with kedro-mlflow write their store and
    experiment into the environment, where the next test of the same worker, and every process it
    starts, would find another test's store (a served model "not found")."""
    saved = dict(os.environ)
    yield
    mlflow.set_tracking_uri(None)  # the module's own copy; it also unsets the variable
    mlflow_fluent._active_experiment_id = None  # set_experiment's, an id of that store: no public reset
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def mlflow_store(tmp_path) -> str:
    """MLflow's fluent API pointed at a fresh SQLite store in the test's folder, for this test
    (the fixture above points it back): the store's URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def digits_project(tmp_path_factory) -> Path:
    """A project copy where `kedro run --env test` has run pretrain, then evaluate."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    for pipeline in ("pretrain", "evaluate"):  # what each printed stays readable for the tests
        result = kedro(project, "--pipeline", pipeline, "--env", "test")
        (project / f"{pipeline}.log").write_text(result.stdout + result.stderr)
    return project


