"""The first hour with `kedro run`: no warnings a user cannot act on, one-paragraph answers to
the usual mistakes, a readable MLflow `runner` tag. Real `kedro run`s in copies of the project."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from aavae.cli import REFUSED_WRITES, refused_file
from tests.conftest import copy_project, kedro

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

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
    assert "base, cifar10, cifar10_short, imagefolder, local, stl10, test" in text
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
    tags = {run.info.run_name.split()[0]: run.data.tags.get("runner") for run in client.search_runs([experiment.experiment_id])}
    assert tags == {"pretrain": "SequentialRunner", "evaluate": "SequentialRunner"}


def test_a_misspelt_parameter_group_gets_a_suggestion(project):
    result = kedro(project, "--pipeline", "ingest", "--env", "test", "--params", "pretrian.max_epochs=1",
                   check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text
    assert "'pretrian': unknown parameter group; did you mean 'pretrain'?" in text


def test_an_error_a_node_explains_is_one_message_with_the_traceback_in_the_log_file(project, tmp_path):
    missing = tmp_path / "no_such_folder"
    result = kedro(project, "--pipeline", "ingest", "--env", "imagefolder", "--params",
                   f"dataset.path={missing}", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0
    assert "Traceback" not in text and "No nodes ran" not in text, text[-3000:]
    error = text[text.index("Error: "):].strip().splitlines()
    assert error[0] == f"Error: Image folder path '{missing}' does not exist. Expected <split>/<class>/<image> " \
        "with a 'train' split and a 'test' (or 'val') split of held-out images for evaluation, e.g. " \
        "train/cat/0001.jpg and test/cat/0002.png, as a folder, .tar, .tar.gz/.tgz or .zip file, optionally " \
        "inside one top-level folder."
    assert error[1] == f"(The traceback is in {project / 'logs' / 'last_error.log'}; run with --verbose to print it.)"
    assert len(error) == 2
    logged = (project / "logs" / "last_error.log").read_text()
    assert f"dataset.path={missing}" in logged.splitlines()[0]
    assert "Traceback (most recent call last)" in logged and "DatasetError: Image folder path" in logged


def test_verbose_prints_the_traceback_of_an_explained_error(project, tmp_path):
    result = kedro(project, "--pipeline", "ingest", "--env", "imagefolder", "--params",
                   f"dataset.path={tmp_path / 'missing'}", "--verbose", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in text and "does not exist" in text


def test_evaluating_without_a_model_says_what_to_run(project):
    result = kedro(project, "--pipelines", "ingest,evaluate", "--env", "test", check=False, timeout=600)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text, text[-3000:]
    assert "Error: No model to evaluate: data/test/06_models/aavae_model.pt does not exist. Run `kedro run " \
        "--pipeline pretrain` first, or set --params evaluate.checkpoint=<path>." in text
    assert text.count("was closed because of an error") == 1, "kedro-mlflow closes the run once"


def test_evaluate_in_the_imagefolder_env_needs_no_dataset_path(project):
    """Evaluate reads what ingest stored: the folder's path is asked for by ingest alone."""
    result = kedro(project, "--pipeline", "evaluate", "--env", "imagefolder", check=False, timeout=600)
    text = output(result)
    assert "dataset.path is required" not in text, text[-3000:]
    assert "data/imagefolder/03_primary/images_train' does not exist" in " ".join(text.split()), text[-3000:]
    result = kedro(project, "--pipeline", "ingest", "--env", "imagefolder", check=False, timeout=600)
    assert "dataset.path is required to ingest dataset.name=imagefolder" in output(result)


def test_a_file_where_a_data_folder_belongs_is_one_line_naming_the_path(tmp_path):
    """Kedro's catalog meets the OSError inside pathlib: it was a 60-line traceback."""
    project = copy_project(tmp_path)
    primary = project / "data" / "test" / "03_primary"  # under the test env's root (conf/test/globals.yml)
    primary.parent.mkdir()
    primary.write_text("not a folder")
    result = kedro(project, "--pipeline", "ingest", "--env", "test", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text, text[-3000:]
    error = text[text.index("Error: "):].strip().splitlines()
    assert error[0] == f"Error: Cannot write '{primary}': File exists. Make it a folder " \
        "you may write (data/ and its layers are written to), then run the same command again."
    assert len(error) == 2 and "last_error.log" in error[1]


def test_a_model_bundle_that_would_run_code_is_refused_in_one_line_without_torchs_advice(tmp_path, digits_project):
    """It was three tracebacks ending in torch's advice to load it with weights_only=False."""
    project = copy_project(tmp_path)
    shutil.copytree(digits_project / "data/test/03_primary", project / "data/test/03_primary")  # its ingest
    marker, bundle = tmp_path / "ran", project / "data/test/06_models/aavae_model.pt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "spec": Payload(f"touch {marker}")}, bundle)
    result = kedro(project, "--pipeline", "evaluate", "--env", "test", check=False, timeout=300)
    text = output(result)
    assert result.returncode != 0 and "Traceback" not in text, text[-3000:]
    assert "weights_only" not in text and not marker.exists()
    error = text[text.index("Error: "):].strip().splitlines()
    assert f"refers to {os.system.__module__}.system, which is not among the classes" in error[0]
    assert "nothing in the file was run" in error[0] and len(error) == 2


class Payload:
    """Unpickled as ``os.system(command)``: what a malicious file carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("number", sorted(REFUSED_WRITES))
def test_every_refused_write_is_named_by_path_and_cause_wherever_it_was_met(number):
    from kedro.io import DatasetError as KedroDatasetError

    refusal = OSError(number, os.strerror(number), "/data/06_models/x.pt")
    wrapped = KedroDatasetError("aavae_model: Failed while saving data to dataset")
    wrapped.__cause__ = refusal
    for error in (refusal, wrapped):
        message = refused_file(error)
        assert message.startswith(f"Cannot write '/data/06_models/x.pt': {os.strerror(number)}. ")
        assert "\n" not in message
    assert refused_file(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None, "a missing file: a bug"
    assert refused_file(OSError(number, "no path")) is None
    # A writer's temporary beside its artifact (a read-only data/ refuses it first): the folder
    # is what the user fixes, not a file named '..pretrain.lock.json.tmp-<pid>-<host>-...'.
    temporary = OSError(number, os.strerror(number), "/data/06_models/..pretrain.lock.json.tmp-7-host-x1")
    assert refused_file(temporary).startswith(f"Cannot write '/data/06_models': {os.strerror(number)}. ")


def raised(function, *args):
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001 - the error itself is under test
        return error
    raise AssertionError("nothing was raised")


def test_only_errors_with_the_projects_own_message_lose_their_traceback():
    import numpy as np
    from kedro.io import DatasetError as KedroDatasetError

    from aavae.cli import project_error
    from aavae.common.provenance import ProvenanceError
    from aavae.evaluation import linear_probe

    ours = raised(linear_probe, np.zeros((4, 2)), np.zeros(4, int), np.zeros((4, 3)), np.zeros(4, int), 2)
    assert "feature columns" in str(ours) and project_error(ours), "a ValueError our code raised"
    assert project_error(ProvenanceError("made from other images")), "one of the project's error types"
    wrapped = KedroDatasetError("images_train: damaged")
    wrapped.__cause__ = ours
    assert project_error(wrapped), "Kedro's catalog wrapping ours"
    assert not project_error(raised(np.zeros, -1)), "numpy's own ValueError"
    assert not project_error(raised(abs, "a bug")), "a TypeError: a bug, whoever raised it"
    assert not project_error(KedroDatasetError("Kedro's own failure")), "no message of ours inside"


def test_mlflow_ui_gets_an_address_that_opens_the_training_runs_with_the_loss_charts_first(digits_project):
    client = MlflowClient(f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {run.info.run_name.split()[0]: run for run in client.search_runs([experiment.experiment_id])}
    assert {"loss/train", "loss/val", "train_loss", "val_loss"} <= set(runs["pretrain"].data.metrics)

    address = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
               "?workflowType=machine_learning")
    assert address in re.sub(r"\s+", "", (digits_project / "evaluate.log").read_text())  # however Rich wrapped it
    printed = subprocess.run([sys.executable, "-m", "aavae.reporting.report", "data/test/08_reporting/metrics.json"],
                             cwd=digits_project, capture_output=True, text=True, timeout=120)
    assert f"then open {address}" in printed.stdout, printed.stdout + printed.stderr
    assert "report.html" in printed.stdout and "kedro viz run --no-browser" in printed.stdout
