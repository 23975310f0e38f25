"""What a `kedro run` prints: the results table after an evaluation, one line that says what to
run first when a pipeline's inputs are missing, log lines whole in a file, and MLflow runs named
for what they ran."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
from kedro.io import DatasetError
from mlflow.tracking import MlflowClient

from aavae import cli
from aavae.pipeline_registry import register_pipelines
from aavae.reporting import console
from tests.conftest import copy_project


@pytest.mark.slow
def test_evaluating_a_fresh_clone_says_in_one_line_to_pretrain_and_logs_whole_lines(tmp_path):
    project = copy_project(tmp_path)
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}  # a file, as in CI or nohup
    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipeline", "evaluate", "--env", "test"],
                            cwd=project, env={**env, "KEDRO_DISABLE_TELEMETRY": "true"},
                            capture_output=True, text=True, timeout=600)
    printed = result.stdout + result.stderr

    assert result.returncode == 1 and "Traceback" not in printed, printed[-3000:]
    assert "No nodes ran" not in printed, "Kedro's advice to repeat the command does not apply to a refusal"
    assert result.stderr.strip().splitlines()[-1] == (  # above it: MLflow creating its store
        f"Error: '{project / 'data/test/03_primary/images_train'}' does not exist yet: run `kedro run --pipeline "
        "pretrain --env test` first (it writes what this run reads).")
    assert re.search(r"Mlflow run '[^']+' - '[0-9a-f]{32}' has started\n", result.stdout), result.stdout
    assert all(line.startswith("[") or not line for line in result.stdout.splitlines()), "no record wraps"


@pytest.fixture
def registered(monkeypatch):
    pipelines = register_pipelines()
    monkeypatch.setattr(cli, "registered_pipelines", pipelines)
    return pipelines


def test_the_pipeline_to_run_first_starts_from_the_data_and_writes_all_another_reads(registered):
    written = set().union(*(p.all_outputs() for p in registered.values()))
    for name, pipeline in registered.items():
        first = cli.prerequisite([name])
        needed = pipeline.inputs() & written
        if first is None:
            assert not needed or not any(needed <= p.all_outputs() and not p.inputs() & written
                                         for p in registered.values()), name
            continue
        assert needed <= registered[first].all_outputs() and not registered[first].inputs() & written, name
        assert not set(registered[first].nodes) & set(pipeline.nodes), name
    assert [cli.prerequisite([name]) for name in ("evaluate", "embed", "views", "train")] == [
        "pretrain", "pretrain", "ingest", "prepare"]


def test_only_a_missing_artifact_is_answered_with_the_pipeline_to_run_first():
    from aavae.kedro_ext.datasets import ArraysDataset, MissingArtifact

    missing = None
    try:
        ArraysDataset("data/04_feature/nowhere.npz").load()
    except DatasetError as error:
        wrapped = DatasetError(f"features_train: {error}")
        wrapped.__cause__ = error
        missing = cli._cause(wrapped, MissingArtifact)
    assert isinstance(missing, MissingArtifact) and str(missing.filepath) == "data/04_feature/nowhere.npz"
    assert cli._cause(DatasetError("damaged"), MissingArtifact) is None


def test_in_a_terminal_the_log_is_richs_and_in_a_file_plain(monkeypatch):
    root = logging.getLogger()
    plain = logging.StreamHandler(sys.stdout)
    monkeypatch.setattr(root, "handlers", [plain])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    console.rich_log_in_a_terminal()
    assert root.handlers == [plain]

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    console.rich_log_in_a_terminal()
    assert [type(handler).__name__ for handler in root.handlers] == ["RichHandler"]


@pytest.mark.slow
def test_an_evaluation_ends_with_the_results_table_and_runs_are_named_for_what_they_ran(digits_project):
    printed = (digits_project / "evaluate.log").read_text()
    table = printed[printed.index("Dataset: digits"):]
    assert "| features | 1 label/class |" in table and "| raw_pixels |" in table
    assert "The report:            data/test/08_reporting/report.html" in table and "Linear-eval accuracy:" in table

    client = MlflowClient(f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [
        "evaluate digits aavae resnet18-w8 seed0 (test)", "pretrain digits aavae resnet18-w8 seed0 (test)"]
    assert {run.data.tags["env"] for run in runs} == {"test"}
    assert "viewStateShareKey=headline" in table and "mlflow.sharedViewState.headline" in experiment.tags
