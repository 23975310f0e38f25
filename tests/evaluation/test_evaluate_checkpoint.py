"""`evaluate.checkpoint` through `kedro run`: what was evaluated is what the log and MLflow say."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from aavae.models import ModelSpec, build_model
from tests.conftest import copy_project, kedro

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


def test_a_bundle_of_another_architecture_is_named_in_the_log_and_recorded_in_mlflow(tmp_path):
    project = copy_project(tmp_path)
    kedro(project, "--pipeline", "ingest", "--env", "test")
    spec = ModelSpec(encoder="resnet18", width=4, latent_dim=8, input_size=16)  # conf/test: width 8, latent 16
    bundle = project / "other_model.pt"
    torch.save({"state_dict": build_model(spec).state_dict(), "spec": spec.to_dict(),
                "normalization": {"mean": [0.3] * 3, "std": [0.3] * 3}}, bundle)

    result = kedro(project, "--pipeline", "evaluate", "--env", "test", "--params",
                   f"evaluate.checkpoint={bundle},evaluate.embedding_points=50")

    said = " ".join((result.stdout + result.stderr).split())  # the log wraps long lines
    assert "is a model bundle: it is evaluated with its own architecture" in said
    assert "width 4 (model.* says 8)" in said and "latent_dim 8 (model.* says 16)" in said
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("aavae").experiment_id],
                                "attributes.run_name LIKE 'evaluate %'")
    assert run.data.params["model.width"] == "8", "the configuration stays as given"
    tags = run.data.tags
    assert (tags["evaluated_model.width"], tags["evaluated_model.latent_dim"]) == ("4", "8")
    assert tags["evaluated_model.source"] == str(bundle) and tags["evaluated_model.encoder"] == "resnet18"
