"""The docs' promises that a real run can check: the metric names the pretrain run logs
(listed in docs/pipelines.md)."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs


def readme_metric_names() -> set[str]:
    """``train_<name>`` and ``val_<name>`` for the names docs/pipelines.md lists, plus ``epoch``."""
    readme = (PROJECT_ROOT / "docs" / "pipelines.md").read_text()
    paragraph = readme[readme.index("`train_<name>`"):]
    paragraph = paragraph[: paragraph.index("\n\n")]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph.split("for these names:")[1].split("plus `epoch`")[0]))
    sectioned = set(re.findall(r"`(loss/[a-z]+)`", paragraph))
    return {f"{split}_{name}" for split in ("train", "val") for name in listed - {"epoch"}} | {"epoch"} | sectioned


def test_the_docs_list_exactly_the_metrics_pretraining_logs(digits_project):
    client = MlflowClient(f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    (pretrain,) = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'pretrain %'")
    logged = {key for key in pretrain.data.metrics if not key.startswith("eval_")}  # eval_: copied by evaluate

    assert readme_metric_names() == logged
