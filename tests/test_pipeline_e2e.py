"""End to end: real `kedro run`s in a copy of the project, checked through MLflow's client."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_project, kedro

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


@pytest.fixture(scope="module")
def runs(digits_project):
    client = MlflowClient(tracking_uri=f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    found = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name.split()[0]: run for run in found}
    assert set(by_name) == {"pretrain", "evaluate"}, f"expected one run per kedro run, got {list(by_name)}"
    return client, by_name["pretrain"], by_name["evaluate"]


def _artifacts(client, run_id, path=None):
    names = []
    for item in client.list_artifacts(run_id, path):
        names.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return names


def test_pretrain_run_is_tracked(runs):
    client, pretrain, _ = runs
    assert pretrain.info.status == "FINISHED"
    params = pretrain.data.params
    assert params["pretrain.objective"] == "aavae"
    assert params["model.encoder"] == "resnet18"
    assert int(params["model.num_parameters"]) > 0
    history = client.get_metric_history(pretrain.info.run_id, "train_loss")
    assert len(history) >= 2, "the loss is logged live, once per epoch"
    assert {"val_loss", "train_kl", "val_bpd", "train_cos_sim"} <= set(pretrain.data.metrics)
    artifacts = _artifacts(client, pretrain.info.run_id)
    assert "view_preview.png" in artifacts
    assert "reconstructions.png" in artifacts
    assert any(a.startswith("reconstructions/epoch_") for a in artifacts)


def test_evaluate_run_scores_and_links_to_training(runs, digits_project):
    client, pretrain, evaluate = runs
    metrics = json.loads((digits_project / "data/test/08_reporting/metrics.json").read_text())
    assert metrics["dataset"] == "digits"
    for value in (metrics["linear_top1"], metrics["baselines"]["random_init"]["linear_top1"]):
        assert 0.0 <= value <= 1.0
    # Ten classes, chance is 0.1: even two tiny epochs must learn something.
    assert metrics["linear_top1"] > 0.3
    assert evaluate.data.metrics["linear_top1"] == pytest.approx(metrics["linear_top1"])
    assert evaluate.data.tags["training_run_id"] == pretrain.info.run_id
    training = client.get_run(pretrain.info.run_id)
    assert training.data.metrics["eval_linear_top1"] == pytest.approx(metrics["linear_top1"])
    artifacts = _artifacts(client, evaluate.info.run_id)
    assert {"metrics.json", "confusion_matrix.png"} <= set(artifacts)


def test_unknown_parameter_stops_the_run_before_any_work(tmp_path):
    project = copy_project(tmp_path)
    result = kedro(project, "--pipeline", "pretrain", "--env", "test",
                   "--params", "pretrain.bogus_key=1", check=False, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "pretrain.bogus_key" in output and "unknown parameter" in output
    assert not (project / "data/test/03_primary/images_train").exists(), "nothing was ingested"


@pytest.mark.slow
def test_a_run_cut_short_by_the_time_limit_is_recorded_through_to_the_metrics(tmp_path):
    # A limit under a second (Lightning's timer counts whole seconds: 0) stops training before its first
    # step, whatever the machine.
    project = copy_project(tmp_path)
    pretrained = kedro(project, "--pipeline", "pretrain", "--env", "test", "--params", "pretrain.max_time_minutes=0.001")
    warned = re.search(r"pretrain.max_time_minutes=0.001 stopped training at step 0 of the (\d+) its schedule spans",
                       pretrained.stdout + pretrained.stderr)
    assert warned, pretrained.stdout + pretrained.stderr
    planned = int(warned[1])
    kedro(project, "--pipeline", "evaluate", "--env", "test")
    metrics = json.loads((project / "data/test/08_reporting/metrics.json").read_text())
    assert metrics["cut_by_time_limit"] == {"max_time_minutes": 0.001, "planned_steps": planned, "planned_epochs": 2.0}
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    training = client.get_run(metrics["training_run_id"])
    assert training.data.tags["training.cut_by_time_limit"] == f"0 of {planned} steps"
