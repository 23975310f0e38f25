"""The trained encoder as an MLflow model: registered by `kedro run --pipeline pretrain`, then
loaded with mlflow.pyfunc and served by `mlflow models serve`, giving the features pipeline's
features, and refusing, on both paths and in the same words, every input outside its contract.

One `mlflow models serve` process (module-scoped) answers every HTTP case; it is started with
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` lowering the registered max_batch_size from 512 to
SERVED_MAX_BATCH, so the serve-time override is exercised too, while max_image_side keeps the
registered default.

Tolerance: the features pipeline encodes in batches of 512, the model in the batches it is
sent; other batch sizes may pick other convolution kernels, so the two agree to float32
rounding (rtol 1e-4, atol 1e-5), not bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from aavae.config import RegistryConfig
from aavae.data.imageset import load_imageset
from aavae.kedro_ext.datasets import TorchBundleDataset
from aavae.pipelines.register.nodes import register_encoder
from aavae.serving.contract import InputLimits
from aavae.serving.mlflow_model import (
    TRAINING_RUN_TAG,
    RefusedImages,
    RegisteredEncoder,
    log_encoder_model,
)
from benchmarks.model_server import Server, free_port, started, tree_rss

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
MODEL_NAME = "digits-aavae-encoder"  # conf/base: "{dataset}-{objective}-encoder"
DEFAULTS = RegistryConfig()  # conf/base's registry limits are the schema's defaults
SERVED_MAX_BATCH = 64


@pytest.fixture
def tracking_uri(digits_project):
    """MLflow's fluent API pointed at the project's store, for one test (conftest points it back)."""
    uri = f"sqlite:///{digits_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="module")
def pipeline_features(digits_project):
    """The test images and what the features pipeline extracted from them."""
    images = np.asarray(load_imageset(digits_project / "data/test/03_primary/images_test").images)
    with np.load(digits_project / "data/test/04_feature/features_test.npz") as archive:
        return images, archive["features"]


def test_pretrain_registers_one_version_from_its_own_run(digits_project, tracking_uri):
    client = MlflowClient(tracking_uri)
    record = json.loads((digits_project / "data/test/06_models/registered_model.json").read_text())
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")

    pretrain = client.get_run(versions[0].run_id)
    assert [int(v.version) for v in versions] == [1] and record["version"] == 1
    assert record["model_uri"] == f"models:/{MODEL_NAME}/1" and record["tracking_uri"] == tracking_uri
    assert pretrain.info.run_name.split()[0] == "pretrain", "logged into the run kedro-mlflow opened"
    assert pretrain.data.tags["registered_model"] == f"{MODEL_NAME}/1"
    assert versions[0].tags[TRAINING_RUN_TAG] == pretrain.info.run_id == record["training_run_id"]

    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1")
    assert info.signature.inputs is None, "no input schema: MLflow would cast requests to uint8"
    assert info.signature.params.to_dict() == [
        {"name": "return_mu", "type": "boolean", "default": False, "shape": None}]
    assert info.saved_input_example_info is not None, "an input example is stored with the model"
    assert info.metadata["image_size"] == 16 and info.metadata["resize"] == "resize_crop"
    assert "uint8 images, N x H x W x C with C = 1, 3 or 4" in info.metadata["input"]
    limits = {"max_image_side": DEFAULTS.max_image_side, "max_batch_size": DEFAULTS.max_batch_size}
    assert limits == {"max_image_side": 1024, "max_batch_size": 512}
    assert {key: info.metadata[key] for key in limits} == limits
    assert {key: info.flavors["python_function"]["config"][key] for key in limits} == limits


def test_the_registered_model_gives_the_features_pipelines_features(tracking_uri, pipeline_features):
    images, features = pipeline_features
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")

    representation = model.predict(images)
    both = model.predict(images[:10], params={"return_mu": True})

    np.testing.assert_allclose(representation, features, **TOLERANCE)
    np.testing.assert_allclose(both["representation"], features[:10], **TOLERANCE)
    assert both["mu"].shape == (10, 16)  # conf/test: latent_dim 16
    larger = np.repeat(np.repeat(images[:3], 3, axis=1), 2, axis=2)  # 48 x 32: resized and cropped
    assert model.predict(larger).shape == (3, features.shape[1])


@pytest.fixture(scope="module")
def server(digits_project, tmp_path_factory) -> Iterator[Server]:
    """One server for every HTTP case, with max_batch_size overridden at serve time."""
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{digits_project / 'mlflow.db'}",
           "PATH": f"{venv_bin}:{os.environ['PATH']}", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps({"max_batch_size": SERVED_MAX_BATCH})}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}/1",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # its own process group (started): the uvicorn it execs stops with it
    with started(command, port, tmp_path_factory.mktemp("serve") / "serve.log", env, digits_project) as served:
        yield served


@pytest.fixture(scope="module")
def in_process(digits_project):
    """The same registered model loaded with mlflow.pyfunc, with the server's limits."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{digits_project / 'mlflow.db'}")
    try:
        return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1",
                                        model_config={"max_batch_size": SERVED_MAX_BATCH})
    finally:
        mlflow.set_tracking_uri(previous)


def test_mlflow_models_serve_answers_rest_requests_with_the_pipelines_features(server, pipeline_features):
    images, features = pipeline_features

    status, answer = server.post(images[:SERVED_MAX_BATCH].tolist())
    _, both = server.post(images[:4].tolist(), params={"return_mu": True})

    assert status == 200
    np.testing.assert_allclose(np.array(answer["predictions"]), features[:SERVED_MAX_BATCH], **TOLERANCE)
    np.testing.assert_allclose(np.array(both["predictions"]["representation"]), features[:4], **TOLERANCE)
    assert np.array(both["predictions"]["mu"]).shape == (4, 16)


REFUSALS = {
    "floats": (np.random.default_rng(0).random((2, 16, 16, 3)).tolist(),
               "an array of float64 with shape (2, 16, 16, 3): floats, which the model does not round or scale"),
    "whole-number floats": (np.ones((2, 16, 16, 3)).tolist(), "float64 with shape (2, 16, 16, 3): floats"),
    "5 channels": (np.zeros((2, 16, 16, 5), int).tolist(), "shape (2, 16, 16, 5): 5 channels, where C must be"),
    "N x H x W": (np.zeros((2, 16, 16), int).tolist(), "shape (2, 16, 16): 3 axes"),
    "one image": (np.zeros((16, 16, 3), int).tolist(), "for one H x W x C image send image[None]"),
    "empty batch": ([], "a list with shape (0,): an empty batch: send at least one image"),
    "over 255": (np.full((1, 4, 4, 3), 256).tolist(), "with values from 256 to 256: pixels are 0-255"),
    "negative": (np.full((1, 4, 4, 3), -1).tolist(), "with values from -1 to -1: pixels are 0-255"),
    "text": ([[[["a", "b", "c"]]]], "<U1 with shape (1, 1, 1, 3): text"),
    "null": ([[[[None, 0, 0]]]], "object with shape (1, 1, 1, 3): values that are not all integers"),
    "too many": (np.zeros((SERVED_MAX_BATCH + 1, 2, 2, 3), int).tolist(),
                 f"{SERVED_MAX_BATCH + 1} images, over this model's max_batch_size of {SERVED_MAX_BATCH}"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_input_gets_the_same_named_refusal_over_http_and_in_process(server, in_process, case):
    inputs, problem = REFUSALS[case]

    status, error = server.post(inputs)
    with pytest.raises(RefusedImages) as refused:
        in_process.predict(np.array(inputs) if len(inputs) else inputs)  # as MLflow's parse hands it

    assert status == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert error["message"].startswith("The encoder takes uint8 images, N x H x W x C with C = 1, 3 or 4 "
                                       f"(over JSON: integers 0-255), at most {SERVED_MAX_BATCH} images")
    assert problem in error["message"]
    assert error["message"] == str(refused.value), "one check, the same words on both paths"
    assert len(error["message"]) < 600 and "Failed to predict data" not in error["message"]


def test_images_of_different_sizes_are_refused_on_both_paths(server, in_process):
    ragged = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]

    status, error = server.post([image.tolist() for image in ragged])
    with pytest.raises(RefusedImages, match="images of different sizes, or rows of different lengths"):
        in_process.predict(ragged)

    # Over HTTP MLflow's JSON parse refuses the ragged list itself, before the model runs.
    assert status == 400 and "inhomogeneous shape after 1 dimensions" in error["message"]


def test_an_oversize_image_is_refused_before_any_work_and_the_server_keeps_its_memory(server, pipeline_features):
    images, features = pipeline_features
    side = DEFAULTS.max_image_side + 76  # 1100: 3.6 million values, 16 MB of JSON
    before = tree_rss(server.pid)

    status, error = server.post(np.zeros((1, side, side, 3), np.uint8).tolist())
    after = tree_rss(server.pid)
    status_next, answer = server.post(images[:2].tolist())

    assert status == 400, error
    assert f"images of {side} x {side} pixels: a side over this model's max_image_side of 1024" in error["message"]
    # MLflow parses the JSON before the model runs (hundreds of MB for a moment); nothing of
    # ours follows the refusal, and the server settles back (4000 x 4000 used to add 6 GB).
    assert after - before < 256 * 2**20, f"RSS grew {(after - before) / 2**20:.0f} MB"
    assert status_next == 200
    np.testing.assert_allclose(np.array(answer["predictions"]), features[:2], **TOLERANCE)


def test_a_burst_of_concurrent_requests_is_answered_each_correctly(server, pipeline_features):
    images, features = pipeline_features
    batches = [images[8 * index: 8 * index + 8] for index in range(6)]
    floats = [batch.astype(float) / 255 for batch in batches[:2]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda batch: server.post(batch.tolist()), batches + floats))

    for index, (status, answer) in enumerate(answers[:6]):
        assert status == 200, answer
        np.testing.assert_allclose(np.array(answer["predictions"]), features[8 * index: 8 * index + 8], **TOLERANCE)
    assert all(status == 400 and "floats" in error["message"] for status, error in answers[6:])


def test_a_model_logged_without_limits_loads_and_serves_with_the_default_limits(
    digits_project, pipeline_features, tmp_path, mlflow_store
):
    """A model registered before the limits existed has none in its config: the defaults apply."""
    images, features = pipeline_features
    bundle = TorchBundleDataset(str(digits_project / "data/test/06_models/aavae_model.pt")).load()
    experiment = mlflow.create_experiment("old", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = log_encoder_model(bundle, "resize_crop", "old-encoder", images[:2], InputLimits(32, 4))
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "old")))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    for section in (mlmodel["flavors"]["python_function"]["config"], mlmodel["metadata"]):
        del section["max_image_side"], section["max_batch_size"]
    (local / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    old = RegisteredEncoder(str(local))  # what the embed pipeline loads for embed.model_uri
    count = DEFAULTS.max_batch_size + 44
    images, features = np.concatenate([images, images])[:count], np.concatenate([features, features])[:count]

    assert old.limits == InputLimits(DEFAULTS.max_image_side, DEFAULTS.max_batch_size)
    np.testing.assert_allclose(old.encode(images), features, **TOLERANCE)  # in two calls
    with pytest.raises(RefusedImages, match=f"{count} images, over this model's max_batch_size of 512"):
        old.model.predict(images)


def test_a_limit_overridden_at_loading_must_be_a_positive_integer(tracking_uri):
    with pytest.raises(ValueError, match=r"config is invalid: max_image_side must be a positive integer, "
                                         r"got 0. It is set when the model is logged \(registry.max_image_side"):
        mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1", model_config={"max_image_side": 0})


def test_a_training_run_is_registered_once_and_a_new_one_gets_the_next_version(digits_project, tmp_path,
                                                                               mlflow_store):
    bundle = TorchBundleDataset(str(digits_project / "data/test/06_models/aavae_model.pt")).load()
    images_test = load_imageset(digits_project / "data/test/03_primary/images_test")
    experiment = mlflow.create_experiment("registry", artifact_location=str(tmp_path / "artifacts"))
    registry, dataset = {"model_name": "{dataset}-{objective}-encoder"}, {"name": "digits"}
    with mlflow.start_run(experiment_id=experiment):
        first = register_encoder(bundle, images_test, dataset, registry)
        again = register_encoder(bundle, images_test, dataset, registry)
        other = register_encoder({**bundle, "mlflow_run_id": "another-run"}, images_test, dataset, registry)
    disabled = register_encoder(bundle, images_test, dataset, {"enabled": False})
    no_run = register_encoder(bundle, images_test, dataset, registry)
    versions = MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")

    assert (first["version"], again["version"], other["version"]) == (1, 1, 2)
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert disabled["registered"] is False and "registry.enabled" in disabled["reason"]
    assert no_run["registered"] is False and "no active MLflow run" in no_run["reason"]
