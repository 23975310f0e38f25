"""A throw-away copy of the project to run real `kedro run`s in: for the benchmarks that kill
and rerun pipelines (``faults.py``) and for the tests (``tests/helpers/project.py``).

It lives with the benchmarks, which run in an environment installed with ``make install``
(no test extras): plain standard library, no pytest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
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
