"""Artifacts know where they came from: a model is never scored silently on other images.

The issue's cases through real `kedro run`s: after a digits pretrain, a re-ingest of another
folder (or of the digits at another size) makes evaluate refuse, naming both datasets, with
metrics.json and the training run untouched; an explicit `evaluate.checkpoint` of the same model
(its bundle, or one of its training checkpoints) is a transfer evaluation, said in the log, the
printed table, report.html and MLflow, its images brought to the model's input size. Each
reader called directly: tests/common/test_provenance_readers.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from aavae.common import provenance
from aavae.data.imageset import ImageSet, load_imageset, save_imageset
from aavae.kedro_ext.datasets import ArraysDataset
from tests.conftest import copy_project, kedro, project_runs
from tests.helpers.datasets import two_class_folder

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

FAST_EVALUATION = "evaluate.embedding_points=50,evaluate.baselines=[]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project copy that pretrained on the digits (`--env test`), its metrics.json kept, and
    what its evaluate printed."""
    project = copy_project(tmp_path_factory.mktemp("provenance"))
    kedro(project, "--pipeline", "pretrain", "--env", "test")
    evaluated = kedro(project, "--pipeline", "evaluate", "--env", "test", "--params", FAST_EVALUATION)
    (project / "evaluate.log").write_text(evaluated.stdout + evaluated.stderr)
    shutil.copytree(project / INGESTED, _digits_kept(project))
    return project


INGESTED = "data/test/03_primary"


def _digits_kept(project: Path) -> Path:
    return project.with_name(f"{project.name}-ingested")


@pytest.fixture(autouse=True)
def _digits_put_back(request):
    """After a test on ``trained`` (some ingest other images), its digits are put back as the
    first ingest wrote them: what `kedro run --pipeline ingest` would write again, in no time."""
    yield
    if "trained" in request.fixturenames:
        project = request.getfixturevalue("trained")
        shutil.rmtree(project / INGESTED)
        shutil.copytree(_digits_kept(project), project / INGESTED)


def _training_run(project):
    return next(run for run in project_runs(project) if run.info.run_name.split()[0] == "pretrain")


def _said(result) -> str:
    return " ".join((result.stdout + result.stderr).split())  # the log wraps long lines


def test_a_normal_evaluation_logs_no_provenance_warning(trained):
    """Every artifact of a fresh pretrain + evaluate records its provenance: a warning that it
    cannot be checked would fire on every run, and teach users to ignore the real one."""
    said = " ".join((trained / "evaluate.log").read_text().split())
    assert "Pipeline execution completed" in said
    assert "recorded provenance" not in said and "does not record" not in said
    metrics = json.loads((trained / "data/test/08_reporting/metrics.json").read_text())
    assert metrics["evaluation"] == "same_data" and metrics["model_data_sha256"] == metrics["data_sha256"]


def test_evaluate_refuses_a_model_trained_on_other_images_and_writes_nothing(trained, tmp_path):
    folder = two_class_folder(tmp_path / "other")
    other = f"dataset.name=imagefolder,dataset.path={folder},dataset.image_size=16"
    metrics_before = (trained / "data/test/08_reporting/metrics.json").read_text()
    copied_before = _training_run(trained).data.metrics.get("eval_linear_top1")
    kedro(trained, "--pipeline", "ingest", "--env", "test", "--params", other)

    # the environment says digits: images of another dataset are not its images
    result = kedro(trained, "--pipeline", "evaluate", "--env", "test", "--params", FAST_EVALUATION, check=False)
    said = _said(result)
    assert result.returncode != 0
    assert "The images ingested in data/test/03_primary are imagefolder from" in said
    assert "but this environment's dataset is dataset.name=digits" in said

    result = kedro(trained, "--pipeline", "evaluate", "--env", "test", "--params", f"{other},{FAST_EVALUATION}",
                   check=False)
    said = _said(result)
    assert result.returncode != 0
    assert "aavae_model.pt was trained on digits" in said and "the images ingested now are imagefolder" in said
    assert "evaluate.checkpoint=data/test/06_models/aavae_model.pt" in said, "the way to ask for a transfer"
    assert (trained / "data/test/08_reporting/metrics.json").read_text() == metrics_before
    assert _training_run(trained).data.metrics.get("eval_linear_top1") == copied_before

    # asked for explicitly, the same model is a transfer evaluation: said, recorded, not copied
    result = kedro(trained, "--pipeline", "evaluate", "--env", "test", "--params",
                   f"evaluate.checkpoint=data/test/06_models/aavae_model.pt,{other},{FAST_EVALUATION}")
    assert "Transfer evaluation: data/test/06_models/aavae_model.pt was trained on digits" in _said(result)
    metrics = json.loads((trained / "data/test/08_reporting/metrics.json").read_text())
    assert (metrics["dataset"], metrics["evaluation"], metrics["model_dataset"]) == ("imagefolder", "transfer", "digits")
    assert set(metrics["per_class"]) == {"class0", "class1"}
    assert _training_run(trained).data.metrics.get("eval_linear_top1") == copied_before, "not its data"
    evaluate_run = project_runs(trained)[-1]
    assert evaluate_run.data.tags["evaluation.kind"] == "transfer"
    assert evaluate_run.data.tags["data.name"] == "imagefolder"


def test_a_training_checkpoint_of_other_data_is_a_transfer_said_in_the_table_report_and_mlflow(trained):
    """A checkpoint records its training data as the bundle does: given as evaluate.checkpoint
    after an ingest of other images (the digits at another size), it is scored as a transfer,
    never as of unknown data, its images brought to the model's input size."""
    (checkpoint,) = (trained / "data/test/06_models/checkpoints").glob("*/last.ckpt")
    given = checkpoint.relative_to(trained)
    kedro(trained, "--pipeline", "ingest", "--env", "test", "--params", "dataset.image_size=24")

    refused = kedro(trained, "--pipeline", "evaluate", "--env", "test", "--params", FAST_EVALUATION, check=False)
    assert refused.returncode != 0 and "24 x 24 px" in _said(refused) and "16 x 16 px" in _said(refused)

    result = kedro(trained, "--pipeline", "evaluate", "--env", "test", "--params",
                   f"evaluate.checkpoint={given},{FAST_EVALUATION}")
    assert f"Transfer evaluation: {given} was trained on digits" in _said(result)
    assert "images brought from 24 to 16 px" in _said(result)
    assert _said(result).count("Bringing the train and test images from 24 to 16 px") == 1, "once, not per node"
    metrics = json.loads((trained / "data/test/08_reporting/metrics.json").read_text())
    assert (metrics["evaluation"], metrics["objective"]) == ("transfer", "project checkpoint")
    assert project_runs(trained)[-1].data.tags["evaluation.kind"] == "transfer"
    report = (trained / "data/test/08_reporting/report.html").read_text()
    assert "(transfer from digits)</title>" in report and "Transfer evaluation: a model trained on digits" in report
    printed = subprocess.run([sys.executable, "-m", "aavae.reporting.report", "data/test/08_reporting/metrics.json"],
                             cwd=trained, capture_output=True, text=True, check=True).stdout
    assert "Transfer evaluation: a model trained on digits" in printed.split("| features |")[0], "above the table"
    features = ArraysDataset(str(trained / "data/test/04_feature/features_test.npz")).load()
    assert provenance.stamp_of(features)["data_sha256"] == json.loads(
        (trained / "data/test/03_primary/dataset_card.json").read_text())["sha256"]


def test_training_refuses_views_made_from_another_ingest(trained):
    kedro(trained, "--pipeline", "ingest", "--env", "test", "--params", "dataset.seed=1")  # other split
    result = kedro(trained, "--pipeline", "train", "--env", "test", check=False)
    said = _said(result)
    assert result.returncode != 0 and "view_policy.json was made from other images" in said
    assert "--pipeline prepare" in said


def test_features_of_another_model_are_not_scored(trained):
    """Stale features (say, `--nodes evaluate` after another model's features) are refused."""
    features = ArraysDataset(str(trained / "data/test/04_feature/features_train.npz"))
    arrays = features.load()
    features.save({**arrays, **provenance.stamp(
        {}, **{**provenance.stamp_of(arrays), "model_sha256": "0" * 64})})
    result = kedro(trained, "--pipeline", "__default__", "--env", "test", "--nodes", "resolve_model,evaluate",
                   "--params", FAST_EVALUATION, check=False)
    assert result.returncode != 0 and "features_train.npz holds features of another model" in _said(result)


def test_image_sets_remember_their_ingest_and_older_ones_load_without(tmp_path):
    imageset = ImageSet(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), ("a", "b"), "train", "ab" * 32)
    save_imageset(imageset, tmp_path / "images_train")
    assert load_imageset(tmp_path / "images_train").fingerprint == "ab" * 32
    meta = tmp_path / "images_train" / "meta.json"
    meta.write_text(json.dumps({"split": "train", "class_names": ["a", "b"]}))  # as written before
    assert load_imageset(tmp_path / "images_train").fingerprint is None


def test_the_checks_name_both_sides_and_the_fix(caplog):
    with pytest.raises(provenance.ProvenanceError, match=r"view_policy.json was made from other images "
                                                         r"\(data sha256 aaaaaaaaaaaa\) than the ones ingested now "
                                                         r"\(sha256 bbbbbbbbbbbb\).*Run this"):
        provenance.check_data("view_policy.json", "a" * 64, "b" * 64, "Run this.")
    provenance.check_data("view_policy.json", "a" * 64, "a" * 64, "Run this.")  # the same: silent
    with caplog.at_level("WARNING", logger="aavae.common.provenance"):
        provenance.check_data("an_old_artifact.npz", None, "a" * 64, "Run this.")
    assert "an_old_artifact.npz was written before this project recorded provenance" in caplog.text
    train = ImageSet(np.zeros((1, 8, 8, 3), np.uint8), np.array([0]), ("a",), "train", "a" * 64)
    test = ImageSet(np.zeros((1, 8, 8, 3), np.uint8), np.array([0]), ("a",), "test", "c" * 64)
    with pytest.raises(provenance.ProvenanceError, match="come from different ingests"):
        provenance.same_images(train, test)


def test_a_training_run_of_other_data_never_gets_the_metrics(trained, monkeypatch):
    """tracking refuses to copy onto a run whose data.sha256 tag differs, whoever asks."""
    from mlflow.tracking._tracking_service import utils as tracking_uri

    from aavae import tracking

    uri = f"sqlite:///{trained / 'mlflow.db'}"
    # the environment variable and any URI an earlier test set in this process: both point here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking_uri, "_tracking_uri", uri)
    run, client = _training_run(trained), MlflowClient(uri)
    tracking.log_metrics_to_run(run.info.run_id, {"eval_probe": 0.5}, data_sha256="0" * 64)
    assert "eval_probe" not in client.get_run(run.info.run_id).data.metrics
    tracking.log_metrics_to_run(run.info.run_id, {"eval_probe": 0.5}, data_sha256=run.data.tags["data.sha256"])
    assert client.get_run(run.info.run_id).data.metrics["eval_probe"] == 0.5
