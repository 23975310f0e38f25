"""The first hour with `kedro run`: no warnings a user cannot act on, one-paragraph answers to
the usual mistakes, a readable MLflow `runner` tag. Real `kedro run`s in copies of the project."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_project, kedro

#: What a newcomer must not see: library warnings about library code, Lightning adverts.
NOISE = ("deprecated", "Add type hints", "register_new_resolver", "No typed parameter",
         "Tip:", "GPU available", "Traceback")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("cli"))


def output(result) -> str:
    return result.stdout + result.stderr


@pytest.mark.parametrize("option", ["--pipeline", "--pipelines"])
def test_both_pipeline_options_run_without_warnings_a_user_cannot_act_on(project, option):
    result = kedro(project, option, "ingest", "--env", "test", timeout=300)
    assert "Completed node: ingest" in output(result) or "completed successfully" in output(result)
    assert not [word for word in NOISE if word in output(result)], output(result)[-3000:]


def test_pretraining_output_is_free_of_library_noise(digits_project):
    log = (digits_project / "pretrain.log").read_text()
    assert not [word for word in NOISE if word in log], log[-3000:]


def test_an_unknown_environment_is_named_with_the_ones_that_exist(project):
    result = kedro(project, "--pipeline", "pretrain", "--env", "cifar100", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0
    assert "Environment 'cifar100' does not exist" in text and "Did you mean 'cifar10'?" in text
    assert "base, cifar10, imagefolder, local, stl10, test" in text
    assert "Traceback" not in text and "tracking backend" not in text


def test_a_misspelt_parameter_is_one_paragraph_with_a_suggestion(project):
    result = kedro(project, "--pipeline", "pretrain", "--env", "test", "--params", "pretrain.max_epoch=3",
                   check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0
    assert "'pretrain.max_epoch': unknown parameter; did you mean max_epochs?" in text
    assert "Traceback" not in text
    assert len(text[text.index("Error: Invalid parameters"):].strip().splitlines()) <= 4


def test_a_misspelt_pipeline_is_named_with_the_registered_ones(project):
    result = kedro(project, "--pipeline", "pretrian", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert "There is no pipeline 'pretrian'. Did you mean 'pretrain'?" in text and "embed" in text


def test_the_mlflow_runner_tag_names_the_runner(digits_project):
    client = MlflowClient(f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    tags = {run.info.run_name: run.data.tags.get("runner") for run in client.search_runs([experiment.experiment_id])}
    assert tags == {"pretrain": "SequentialRunner", "evaluate": "SequentialRunner"}
