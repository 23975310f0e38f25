"""Real `kedro run`s in a throw-away copy of the project (``benchmarks/project_copy.py``, which
the benchmarks use too), and what they left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.project_copy import DATA_LAYERS, PROJECT_ROOT, artifact_root, copy_project  # noqa: F401 - re-exported

SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


def kedro(project: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real kedro CLI in ``project``; on failure show what it printed."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kedro run {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def project_runs(project: Path) -> list:
    """Every MLflow run of a project copy's 'aavae' experiment, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
