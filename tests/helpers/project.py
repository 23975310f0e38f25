"""A throw-away copy of the project to run real `kedro run`s in, and what they left.

No pytest here: ``benchmarks/faults.py`` uses these too, in an environment installed with
``make install`` (without the test extras).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
DATA_LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input",
               "06_models", "07_model_output", "08_reporting")


def copy_project(destination: Path) -> Path:
    """Copy what `kedro run` needs (code, config, data layout), without any run outputs."""
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(PROJECT_ROOT / name, destination / name)
    shutil.copytree(PROJECT_ROOT / "conf", destination / "conf", ignore=shutil.ignore_patterns("local"))
    (destination / "conf" / "local").mkdir()
    shutil.copytree(PROJECT_ROOT / "src", destination / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for layer in DATA_LAYERS:
        (destination / "data" / layer).mkdir(parents=True)
    return destination


def artifact_root(project: Path, env: str) -> Path:
    """Where `kedro run --env <env>` writes its artifacts in ``project`` (its globals' ``root``:
    data/ for base, data/<env>/ for a dataset environment)."""
    from kedro.config import OmegaConfigLoader

    return project / OmegaConfigLoader(str(project / "conf"), base_env="base", default_run_env=env)["globals"]["root"]


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
