"""What `mlflow ui` shows first: the experiment marked as model training, the loss curves in a
chart section of their own (above the alphabetical "Model metrics"), and the address of the
training runs' page. A real SQLite MLflow store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from aavae import tracking
from aavae.kedro_ext.hooks import RunTagHooks
from aavae.tracking.live import live_logger
from aavae.tracking.store import anchored_at


@pytest.fixture
def run(mlflow_store, request):
    mlflow.set_experiment("aavae")
    with mlflow.start_run(run_name=getattr(request, "param", "pretrain")) as active:
        yield active


@pytest.mark.slow
def test_a_live_logger_marks_its_experiment_as_model_training(run):
    client = MlflowClient()
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(run.info.experiment_id).tags

    logger = live_logger()

    assert logger is not None and logger.run_id == run.info.run_id
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


@pytest.mark.slow
def test_a_kind_a_user_chose_is_left_alone(run):
    client = MlflowClient()
    client.set_experiment_tag(run.info.experiment_id, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.mark_experiment_as_model_training()
    assert client.get_experiment(run.info.experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


@pytest.mark.slow
def test_the_loss_curves_are_also_logged_under_a_section_of_their_own(run):
    logger = live_logger()
    logger.log_metrics({"train_loss": 912.5, "epoch": 3.0, "train_kl": 4.0}, step=40)
    logger.log_metrics({"val_loss": 930.0, "val_bpd": 1.9}, step=40)
    mlflow.flush_async_logging()  # the live logger logs asynchronously, as in training

    client = MlflowClient()
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in client.get_run(run.info.run_id).data.metrics}
    assert history["loss/train"] == history["train_loss"] == [(40, 912.5)]
    assert history["loss/val"] == history["val_loss"] == [(40, 930.0)]
    assert not {key for key in history if "/" in key} - {"loss/train", "loss/val"}, history


@pytest.mark.slow
def test_the_runs_page_address_opens_model_training_not_the_genai_overview(run):
    address = tracking.runs_page_address()
    assert address == (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
                       "?workflowType=machine_learning&viewStateShareKey=headline")


def test_without_a_run_nothing_is_marked_or_addressed():
    assert mlflow.active_run() is None
    assert tracking.runs_page_address() is None
    tracking.mark_experiment_as_model_training()  # no run, no store touched: returns quietly


PARAMS = {"dataset": {"name": "digits", "path": None}, "model": {"encoder": "resnet18", "width": 32},
          "pretrain": {"objective": "aavae", "seed": 0}, "evaluate": {"few_labels": [5, 1], "checkpoint": None}}


@pytest.mark.slow
def test_a_run_is_named_for_its_data_model_and_seed_and_tagged_with_its_environment(run):
    hooks = RunTagHooks()
    hooks.before_pipeline_run({"pipeline_names": ["pretrain"], "env": None, "runner": None}, None,
                              SimpleNamespace(load=lambda name: PARAMS))

    recorded = MlflowClient().get_run(run.info.run_id)
    assert recorded.info.run_name == "pretrain digits aavae resnet18-w32 seed0"
    assert recorded.data.tags["env"] == "local" and recorded.data.tags["runner"] == "SequentialRunner"
    view = MlflowClient().get_experiment(run.info.experiment_id).tags[tracking.SHARED_VIEW_TAG + "headline"]
    columns = json.loads(view)["selectedColumns"]
    assert {"metrics.`eval_few_label_1_top1`", "metrics.`few_label_1_top1`", "metrics.`eval_linear_top1`",
            "metrics.`linear_top1`", "tags.`env`"} <= set(columns)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["budget aavae seed 1"], indirect=True)
def test_a_run_name_set_in_mlflow_yml_is_kept(run):
    RunTagHooks().before_pipeline_run({"pipeline_names": ["pretrain"], "env": "cifar10_short", "runner": None},
                                      None, SimpleNamespace(load=lambda name: PARAMS))
    recorded = MlflowClient().get_run(run.info.run_id)
    assert recorded.info.run_name == "budget aavae seed 1" and recorded.data.tags["env"] == "cifar10_short"


FIELDS = st.fixed_dictionaries({
    "dataset": st.sampled_from([("digits", None), ("cifar10", None), ("imagefolder", "/data/cifar10_jpeg.tar.gz"),
                                ("imagefolder", "/data/pets/")]),
    "objective": st.sampled_from(["aavae", "vae", "ae"]), "encoder": st.sampled_from(["resnet18", "resnet50"]),
    "width": st.sampled_from([8, 16, 32, 64]), "seed": st.integers(0, 3),
    "env": st.sampled_from([None, "cifar10_short", "test"]), "pipeline": st.sampled_from(["pretrain", "evaluate"]),
})


def _name(fields: dict) -> str:
    (dataset, path) = fields["dataset"]
    params = {"dataset": {"name": dataset, "path": path}, "model": {"encoder": fields["encoder"], "width": fields["width"]},
              "pretrain": {"objective": fields["objective"], "seed": fields["seed"]}, "evaluate": {}}
    return tracking.run_name([fields["pipeline"]], params, fields["env"])


@given(FIELDS, FIELDS)
def test_two_runs_share_a_name_only_when_data_model_seed_environment_and_pipeline_agree(one, other):
    assert (_name(one) == _name(other)) == (one == other)
    assert _name(one).split()[0] == one["pipeline"], "the pipeline stays the first word"


def test_a_relative_store_is_the_project_folders_whatever_the_working_directory(tmp_path):
    assert anchored_at("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert anchored_at("sqlite:///mlflow.db?timeout=5", tmp_path).endswith(f"{tmp_path.resolve()}/mlflow.db?timeout=5")
    for kept in ("sqlite:////abs/mlflow.db", "http://127.0.0.1:5000", None):
        assert anchored_at(kept, tmp_path) == kept
