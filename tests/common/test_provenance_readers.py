"""Every reader of an artifact checks what it was made from, called directly (no kedro run).

An artifact made from other data than the images ingested now is refused, naming it (images,
dataset card, view policy, validation views, model bundle, training checkpoint, features); a
set without a fingerprint is warned about, and only then; whose data the scores are on shows
above the printed table and in report.html; a one-class dataset is named at ingest and refused
before evaluation extracts anything.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aavae.common import provenance
from aavae.data.imageset import ImageSet
from tests.helpers.datasets import two_class_folder

OURS, OTHER = "a" * 64, "b" * 64
CARD = {"name": "imagefolder", "source": "here", "image_shape": [16, 16, 3], "resize": "resize_crop", "sha256": OURS}
MODEL = {"width": 4, "latent_dim": 8}
ROOT = "data/env"


def _images(split: str, fingerprint: str | None = OURS) -> ImageSet:
    pixels = np.random.default_rng(len(split)).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    return ImageSet(pixels, np.array([0, 1] * 4), ("x", "y"), split, fingerprint)


@pytest.fixture(scope="module")
def artifacts():
    """One of each artifact, all made from the images of fingerprint OURS, as the nodes make them."""
    from aavae.config import ModelConfig
    from aavae.evaluation import make_bundle
    from aavae.models import ModelSpec, build_model
    from aavae.pipelines.views.nodes import make_validation_views, resolve_view_policy
    from aavae.views import split_view_policy

    train, test = _images("train"), _images("test")
    policy = resolve_view_policy({}, train)
    net = build_model(ModelSpec(**ModelConfig(**MODEL).model_dump(), input_size=16))
    bundle = make_bundle(net, split_view_policy(policy, "view_policy.json")[1], data=provenance.data_identity(CARD), class_names=["x", "y"])
    model = provenance.model_fingerprint(bundle)
    features = {split: provenance.stamp({"features": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "labels": np.array([0, 1] * 4)},
                                        split=split, model_sha256=model, data_sha256=OURS) for split in ("train", "test")}
    return {"images_train": train, "images_test": test, "images_unlabeled": _images("unlabeled"), "view_policy": policy,
            "val_views": make_validation_views(_images("val"), _images("unlabeled"), policy, {"val_count": 4}, {}, ROOT), "dataset_card": CARD,
            "aavae_model": bundle, "evaluation_model": {**bundle, "evaluated_on": {**provenance.data_identity(CARD)}},
            "features_train": features["train"], "features_test": features["test"],
            "baseline_features": provenance.stamp({f"raw_pixels_{split}": features[split]["features"]
                                                   for split in ("train", "test")}, data_sha256=OURS)}


def _of_other_data(name: str, artifact):
    """``artifact`` as if made from the images of fingerprint OTHER."""
    if isinstance(artifact, ImageSet):
        return ImageSet(artifact.images, artifact.labels, artifact.class_names, artifact.split, OTHER)
    if name in ("dataset_card", "view_policy"):
        return {**artifact, ("sha256" if name == "dataset_card" else "data_sha256"): OTHER}
    if name == "aavae_model":
        return {**artifact, "data": {**artifact["data"], "sha256": OTHER}}
    if name == "evaluation_model":
        return {**artifact, "evaluated_on": {**artifact["evaluated_on"], "sha256": OTHER}}
    return {**artifact, **provenance.stamp({}, **{**provenance.stamp_of(artifact), "data_sha256": OTHER})}


def _pretrain(a):
    from aavae.training import train

    return train(a["images_train"], a["images_unlabeled"], a["val_views"], a["view_policy"], a["dataset_card"],
                    MODEL, {"max_epochs": 1, "compile": False}, ROOT)


def _views(a):
    from aavae.pipelines.views.nodes import preview_views

    return preview_views(a["images_train"], a["view_policy"], {}, ROOT)


def _validation_views(a):
    from aavae.pipelines.views.nodes import make_validation_views

    return make_validation_views(_images("val"), _images("unlabeled"), a["view_policy"], {"val_count": 4}, {}, ROOT)


def _resolve(a):
    from aavae.pipelines.features.nodes import resolve_model

    return resolve_model(a["aavae_model"], a["images_train"], a["images_test"], a["dataset_card"],
                         {"name": "imagefolder"}, {}, MODEL, {}, ROOT)


def _features(a):
    from aavae.pipelines.features.nodes import extract_model_features

    return extract_model_features(a["evaluation_model"], a["images_train"], a["images_test"], {})


def _evaluate(a):
    from aavae.pipelines.evaluate.nodes import evaluate

    small = {"probe_weight_decays": [1e-4], "few_labels": [], "baselines": ["raw_pixels"], "knn_k": 3}
    return evaluate(a["features_train"], a["features_test"], a["baseline_features"], a["evaluation_model"],
                    a["images_train"], a["images_test"], small, ROOT)


def _embedding(a):
    from aavae.pipelines.evaluate.nodes import plot_embedding

    return plot_embedding(a["features_test"], a["evaluation_model"], {"embedding_method": "pca"}, ROOT)


READERS = [  # (the artifact made from other data, the node reading it, what the refusal names)
    ("images_unlabeled", _pretrain, "data/env/03_primary/images_unlabeled was made from other images"),
    ("view_policy", _pretrain, "data/env/05_model_input/view_policy.json was made from other images"),
    ("val_views", _pretrain, "data/env/05_model_input/val_views.npz was made from other images"),
    ("view_policy", _views, "data/env/05_model_input/view_policy.json was made from other images"),
    ("images_test", _resolve, "come from different ingests"),
    ("dataset_card", _resolve, "data/env/03_primary/dataset_card.json was made from other images"),
    ("aavae_model", _resolve, "data/env/06_models/aavae_model.pt was trained on imagefolder from here (16 x 16 px, sha256 bbbbbbbbbbbb)"),
    ("evaluation_model", _features, "the evaluated model's data (evaluation_model) was made from other images"),
    ("features_train", _evaluate, "data/env/04_feature/features_train.npz was made from other images"),
    ("baseline_features", _evaluate, "data/env/04_feature/baseline_features.npz was made from other images"),
    ("features_test", _embedding, "data/env/04_feature/features_test.npz was made from other images"),
]


@pytest.mark.parametrize(("name", "reader", "named"), READERS, ids=[f"{r.__name__[1:]}-{n}" for n, r, _ in READERS])
def test_every_reader_refuses_an_artifact_made_from_other_data(artifacts, name, reader, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a reader that got past its check would write here, not in the project
    reader(artifacts)  # all of one ingest: no refusal (the pretrain reader trains one epoch)
    with pytest.raises(provenance.ProvenanceError) as refused:
        reader({**artifacts, name: _of_other_data(name, artifacts[name])})
    assert named in " ".join(str(refused.value).split())


@pytest.mark.parametrize("reader", [_pretrain, _views, _validation_views])
def test_a_broken_stored_view_policy_is_named_by_its_path_in_the_environment(artifacts, reader, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = {key: value for key, value in artifacts["view_policy"].items() if key != "flip_p"}
    with pytest.raises(ValueError, match=r"^the view policy \(data/env/05_model_input/view_policy.json\) is not "
                       "a complete, valid record: missing flip_p"):
        reader({**artifacts, "view_policy": broken})


def test_resuming_from_a_checkpoint_of_other_data_is_refused(artifacts, tmp_path, monkeypatch):
    """Checkpoint folders are keyed by the data; one copied into another's is refused, not resumed."""
    import torch

    from aavae.training import run

    monkeypatch.chdir(tmp_path)
    _pretrain(artifacts)  # trains one epoch and checkpoints it under data/env/06_models/checkpoints
    (last,) = (tmp_path / ROOT / "06_models/checkpoints").glob("*/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint[provenance.CHECKPOINT_DATA] == provenance.data_identity(CARD), "checkpoints record their data"
    torch.save({**checkpoint, provenance.CHECKPOINT_DATA: {**CARD, "sha256": OTHER}}, last)
    monkeypatch.setattr(run, "finished_training", lambda *args: None)
    with pytest.raises(provenance.ProvenanceError, match=r"last.ckpt was made from other images"):
        _pretrain(artifacts)


@pytest.mark.parametrize("stamped", [("train", "test"), ("train",), ()])
def test_image_sets_warn_only_when_one_lacks_its_fingerprint(stamped, caplog, monkeypatch):
    """The warning that provenance cannot be checked fires for a set without a fingerprint, and
    only then: it used to compare the number of fingerprints with the number of sets."""
    monkeypatch.setattr(provenance, "_warned", set())  # it warns once per process
    sets = [_images(split, OURS if split in stamped else None) for split in ("train", "test")]
    with caplog.at_level("WARNING", logger="aavae.common.provenance"):
        assert provenance.same_images(*sets) == (OURS if stamped else None)
    assert ("recorded provenance" in caplog.text) == (len(stamped) < 2)


@pytest.mark.parametrize(("kind", "said"), [("same_data", None), ("transfer", "Transfer evaluation: a model trained on digits"),
                                            ("data_unrecorded", "Training data unknown")])
def test_whose_data_the_scores_are_on_shows_above_the_printed_table_and_in_report_html(kind, said, tmp_path, capsys):
    from aavae.reporting.report import main
    from aavae.reporting.report_html import render_report

    metrics = {"dataset": "imagefolder", "evaluation": kind, "model_dataset": "digits", "objective": "aavae",
               "linear_top1": 0.5, "linear_top5": 0.9, "knn_top1": 0.4, "per_class": {"x": 0.5}, "baselines": {}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(tmp_path / "metrics.json")]) == 0
    above_the_table = capsys.readouterr().out.split("| features |")[0]
    report = " ".join(render_report(metrics, {}).split())
    for shown in (above_the_table, report):
        assert (said in shown) if said else ("Transfer" not in shown and "unknown" not in shown)


def test_a_one_class_dataset_is_named_at_ingest_and_refused_before_evaluation_extracts_anything(
        artifacts, tmp_path, monkeypatch, caplog):
    """Pretraining and embed work on one class; the evaluation cannot, and says so at ingest."""
    from aavae.pipelines.ingest.nodes import ingest

    two_class_folder(tmp_path / "tree")
    for split in ("train", "test"):
        for image in (tmp_path / "tree" / split / "class1").iterdir():
            image.unlink()
        (tmp_path / "tree" / split / "class1").rmdir()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="aavae.pipelines.ingest.nodes"):
        train = ingest({"name": "imagefolder", "path": str(tmp_path / "tree"), "image_size": 16})[0]
    assert train.class_names == ("class0",)
    said = " ".join(caplog.text.split())
    assert f"imagefolder from {tmp_path / 'tree'} has 1 class (class0)" in said and "will refuse it" in said

    one_class = {split: ImageSet(artifacts[split].images, np.zeros(8, np.int64), ("x",), artifacts[split].split, OURS)
                 for split in ("images_train", "images_test")}
    with pytest.raises(ValueError, match=r"imagefolder from here \(16 x 16 px, sha256 aaaaaaaaaaaa\) has 1 class \(x\)"):
        _resolve({**artifacts, **one_class})


def test_a_transfer_evaluation_says_once_that_its_images_are_brought_to_the_models_size(
        artifacts, tmp_path, monkeypatch, caplog):
    """Both feature nodes and evaluate bring the images to the model's input size; the log says so once."""
    import torch

    from aavae.pipelines.evaluate.nodes import evaluate
    from aavae.pipelines.features.nodes import (
        extract_baseline_features,
        extract_model_features,
        resolve_model,
    )

    monkeypatch.chdir(tmp_path)
    torch.save(_of_other_data("aavae_model", artifacts["aavae_model"]), tmp_path / "other.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    train, test = (ImageSet(pixels, np.array([0, 1] * 4), ("x", "y"), split, OURS) for split in ("train", "test"))
    settings = {"checkpoint": "other.pt", "probe_weight_decays": [1e-4], "few_labels": [], "baselines": ["raw_pixels"],
                "knn_k": 3}
    with caplog.at_level("INFO"):
        model = resolve_model(None, train, test, {**CARD, "image_shape": [24, 24, 3]}, {"name": "imagefolder"},
                              settings, MODEL, {}, ROOT)
        features = extract_model_features(model, train, test, settings)
        baselines = extract_baseline_features(model, train, test, settings)
        evaluate(*features, baselines, model, train, test, settings, ROOT)
    assert model["evaluated_on"]["kind"] == "transfer"
    assert caplog.text.count("Bringing the train and test images from 24 to 16 px") == 1


@pytest.mark.parametrize("baseline", ["random_init", "raw_pixels"])
def test_the_evaluate_log_writes_every_accuracy_alike(artifacts, baseline, caplog):
    """``linear top-1 0.6250 (random init 0.5000), kNN top-1 0.3750``: no bare float, no None."""
    from aavae.pipelines.evaluate.nodes import evaluate

    features = {split: artifacts[f"features_{split}"]["features"] for split in ("train", "test")}
    baselines = provenance.stamp({f"{baseline}_{split}": features[split][:, ::-1].copy() for split in features},
                                 data_sha256=OURS)
    settings = {"probe_weight_decays": [1e-4], "few_labels": [], "baselines": [baseline], "knn_k": 3}
    with caplog.at_level("INFO", logger="aavae.pipelines.evaluate.nodes"):
        evaluate(artifacts["features_train"], artifacts["features_test"], baselines, artifacts["evaluation_model"],
                 artifacts["images_train"], artifacts["images_test"], settings, ROOT)
    (line,) = [record.getMessage() for record in caplog.records if record.getMessage().startswith("linear top-1")]
    random_init = r"\d\.\d{4}" if baseline == "random_init" else "not scored"
    assert re.fullmatch(rf"linear top-1 \d\.\d{{4}} \(random init {random_init}\), kNN top-1 \d\.\d{{4}}", line), line
