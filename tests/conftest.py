"""Shared fixtures: a throw-away copy of the project to run real `kedro run`s in.

The builders themselves live in ``tests/helpers/project.py`` (usable without pytest, by the
benchmarks); they are re-exported here, where the test files import them from.
"""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def digits_project(tmp_path_factory) -> Path:
    """A project copy where `kedro run --env test` has run pretrain, then evaluate."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    for pipeline in ("pretrain", "evaluate"):  # what each printed stays readable for the tests
        result = kedro(project, "--pipeline", pipeline, "--env", "test")
        (project / f"{pipeline}.log").write_text(result.stdout + result.stderr)
    return project


#: Fixtures that run `kedro run`, train, or start a server (session or module wide).
SLOW_FIXTURES = {"digits_project", "embed_project", "trained", "server", "bounded_server", "runs",
                 "pipeline_features", "project", "run"}
#: Names a test calls directly when it starts a process or a real pipeline.
SLOW_CALLS = {"kedro", "copy_project", "subprocess", "Popen", "KedroSession", "run_pipeline",
              "project_runs", "torchrun", "spawn"}
#: Files whose every test starts processes (servers, torchrun, notebooks, compiled steps,
#: benchmarks) through helpers the two rules above do not see.
SLOW_FILES = {"test_mlflow_model.py", "test_serve.py", "test_distributed_pipeline.py", "test_distributed.py",
              "test_interruption.py", "test_compile_interruption.py", "test_native_abort.py",
              "test_notebook.py", "test_benchmarks_smoke.py", "test_budget_smoke.py", "test_evaluate_benchmark.py",
              "test_checkpoint_faults.py", "test_engine_fallback.py", "test_readme.py", "test_stale_runs.py",
              "test_pretrain_lock.py", "test_cli.py", "test_provenance.py", "test_pipeline_e2e.py",
              "test_embed_pipeline.py", "test_evaluate_checkpoint.py"}


#: Parts of test names that compile a step (Inductor: tens of seconds on a CPU) or ingest the
#: shared 60,000-image CIFAR-10 copy.
SLOW_NAMES = ("compiled", "shared_cifar10")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: starts processes or real kedro runs (`make test-fast` skips it)")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark slow what starts a process: by file, by fixture, or by a direct call."""
    for item in items:
        function = getattr(item, "function", None)
        names = set(getattr(getattr(function, "__code__", None), "co_names", ()))
        if (item.path.name in SLOW_FILES or SLOW_FIXTURES & set(item.fixturenames)
                or SLOW_CALLS & names or any(part in item.name for part in SLOW_NAMES)):
            item.add_marker(pytest.mark.slow)
