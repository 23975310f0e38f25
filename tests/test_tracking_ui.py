"""What `mlflow ui` shows first: the experiment marked as model training, the loss curves in a
chart section of their own (above the alphabetical "Model metrics"), and the address of the
training runs' page. A real SQLite MLflow store."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from aavae import tracking


@pytest.fixture
def run(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("aavae")
    with mlflow.start_run(run_name="pretrain") as active:
        yield active
    mlflow.set_tracking_uri(previous)


def test_a_live_logger_marks_its_experiment_as_model_training(run):
    client = MlflowClient()
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(run.info.experiment_id).tags

    logger = tracking.live_logger()

    assert logger is not None and logger.run_id == run.info.run_id
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_kind_a_user_chose_is_left_alone(run):
    client = MlflowClient()
    client.set_experiment_tag(run.info.experiment_id, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.mark_experiment_as_model_training()
    assert client.get_experiment(run.info.experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_loss_curves_are_also_logged_under_a_section_of_their_own(run):
    logger = tracking.live_logger()
    logger.log_metrics({"train_loss": 912.5, "epoch": 3.0, "train_kl": 4.0}, step=40)
    logger.log_metrics({"val_loss": 930.0, "val_bpd": 1.9}, step=40)
    mlflow.flush_async_logging()  # the live logger logs asynchronously, as in training

    client = MlflowClient()
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in client.get_run(run.info.run_id).data.metrics}
    assert history["loss/train"] == history["train_loss"] == [(40, 912.5)]
    assert history["loss/val"] == history["val_loss"] == [(40, 930.0)]
    assert not {key for key in history if "/" in key} - {"loss/train", "loss/val"}, history


def test_the_runs_page_address_opens_model_training_not_the_genai_overview(run):
    address = tracking.runs_page_address()
    assert address == (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
                       "?workflowType=machine_learning")


def test_without_a_run_nothing_is_marked_or_addressed():
    assert mlflow.active_run() is None
    assert tracking.runs_page_address() is None
    tracking.mark_experiment_as_model_training()  # no run, no store touched: returns quietly
