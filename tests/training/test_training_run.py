"""training.run.train owns a pretraining run, called directly (no kedro run): what it records in
the active MLflow run and in the bundle, across a run the time limit cuts, a rerun that finds it
already trained, and a rerun without the limit that resumes it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from mlflow.tracking import MlflowClient

from aavae.common import provenance
from aavae.data.imageset import ImageSet
from aavae.pipelines.views.nodes import make_validation_views, resolve_view_policy
from aavae.training import train

DATA = "a" * 64
CARD = {"name": "imagefolder", "source": "here", "image_shape": [16, 16, 3], "sha256": DATA}
ROOT = "data/env"
# 8 images in batches of 4: 2 steps an epoch, 4 in the schedule; a 3-minute limit stops it after
# step 3, in the middle of the second epoch, which the resumed run finishes
PRETRAIN = {"max_epochs": 2, "batch_size": 4, "training_split": "train", "compile": False, "accelerator": "cpu", "warmup_epochs": 1,
            "max_time_minutes": 3.0}


def _images(split: str) -> ImageSet:
    pixels = np.random.default_rng(len(split)).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    return ImageSet(pixels, np.array([0, 1] * 4), ("x", "y"), split, DATA)


@pytest.fixture
def inputs(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)  # checkpoints go under ROOT, relative to the project
    mlflow.set_experiment("training-run")  # not the experiment id an earlier test left active
    train_images = _images("train")
    policy = resolve_view_policy({}, train_images)
    val_views = make_validation_views(_images("val"), _images("unlabeled"), policy, {"val_count": 4}, {}, ROOT)
    return [train_images, _images("unlabeled"), val_views, policy, CARD, {"width": 4, "latent_dim": 8}]


def _minute_a_step(monkeypatch) -> None:
    """Lightning's timer reads one minute per step trained (in this process)."""
    trainers = []
    started = Timer.on_train_start
    monkeypatch.setattr(Timer, "on_train_start", lambda self, trainer, *rest: (trainers.append(trainer),
                                                                               started(self, trainer, *rest)))
    monkeypatch.setattr(Timer, "time_elapsed",
                        lambda self, stage="train": 60.0 * trainers[-1].global_step if trainers else 0.0)


def _run(inputs, **pretrain) -> tuple[dict, dict[str, str]]:
    with mlflow.start_run() as run:
        bundle, _ = train(*inputs, {**PRETRAIN, **pretrain}, ROOT)
    return bundle, MlflowClient().get_run(run.info.run_id).data.tags | {"id": run.info.run_id}


def test_a_run_records_its_data_configuration_engine_and_cut_and_a_rerun_resumes_or_says_it_is_done(
        inputs, monkeypatch):
    _minute_a_step(monkeypatch)
    bundle, tags = _run(inputs)
    (folder,) = Path(ROOT, "06_models/checkpoints").iterdir()
    assert {key: tags[key] for key in ("checkpoint_dir", "objective", "seed", "data.name", "data.sha256",
                                       "data.source", "data.validation_split", "training.engine",
                                       "training.cut_by_time_limit")} == {
        "checkpoint_dir": str(folder), "objective": "aavae", "seed": "0", "data.name": "imagefolder",
        "data.sha256": DATA, "data.source": "here", "data.validation_split": "val", "training.engine": "eager",
        "training.cut_by_time_limit": "3 of 4 steps"}
    assert "resumed_from_run" not in tags and "already_trained_in_run" not in tags
    assert bundle["mlflow_run_id"] == tags["id"] and bundle["steps"] == 3 and bundle["epochs"] == 1.5
    assert bundle["cut_by_time_limit"] == {"max_time_minutes": 3.0, "planned_steps": 4, "planned_epochs": 2.0}
    last = torch.load(folder / "last.ckpt", weights_only=True, mmap=True)
    assert last[provenance.CHECKPOINT_DATA] == provenance.data_identity(CARD), "the checkpoint carries its data"

    again, done = _run(inputs)  # the limit was reached: nothing to train
    assert done["already_trained_in_run"] == tags["id"] and "training.engine" not in done
    assert again["mlflow_run_id"] == tags["id"] and again["steps"] == 3
    assert done["training.cut_by_time_limit"] == "3 of 4 steps"

    resumed, went_on = _run(inputs, max_time_minutes=None)  # not a key of the folder: it resumes
    assert went_on["resumed_from_run"] == tags["id"] and "training.cut_by_time_limit" not in went_on
    assert resumed["steps"] == 4 and resumed["epochs"] == 2.0 and resumed["cut_by_time_limit"] is None
    assert resumed["mlflow_run_id"] == went_on["id"]
