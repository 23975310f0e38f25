"""The trained encoder as an MLflow model: registered by `kedro run --pipeline pretrain`, then
loaded with mlflow.pyfunc and served by `mlflow models serve`, giving the features pipeline's
features.

Tolerance: the features pipeline encodes in batches of 512, the model in the batches it is
sent; other batch sizes may pick other convolution kernels, so the two agree to float32
rounding (rtol 1e-4, atol 1e-5), not bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from aavae.data.imageset import load_imageset
from aavae.datasets import TorchBundleDataset
from aavae.mlflow_model import TRAINING_RUN_TAG
from aavae.pipelines.register.nodes import register_encoder

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
MODEL_NAME = "digits-aavae-encoder"  # conf/base: "{dataset}-{objective}-encoder"


@pytest.fixture
def tracking_uri(digits_project):
    """Point MLflow's fluent API at the project's store for one test, then back."""
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{digits_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def pipeline_features(digits_project):
    """The test images and what the features pipeline extracted from them."""
    images = np.asarray(load_imageset(digits_project / "data/03_primary/images_test").images)
    with np.load(digits_project / "data/04_feature/features_test.npz") as archive:
        return images, archive["features"]


def test_pretrain_registers_one_version_from_its_own_run(digits_project, tracking_uri):
    client = MlflowClient(tracking_uri)
    record = json.loads((digits_project / "data/06_models/registered_model.json").read_text())
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")

    pretrain = client.get_run(versions[0].run_id)
    assert [int(v.version) for v in versions] == [1] and record["version"] == 1
    assert record["model_uri"] == f"models:/{MODEL_NAME}/1"
    assert pretrain.info.run_name == "pretrain", "logged into the run kedro-mlflow opened"
    assert pretrain.data.tags["registered_model"] == f"{MODEL_NAME}/1"
    assert versions[0].tags[TRAINING_RUN_TAG] == pretrain.info.run_id == record["training_run_id"]

    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "uint8", "shape": (-1, -1, -1, -1)}
    assert info.signature.params.to_dict() == [
        {"name": "return_mu", "type": "boolean", "default": False, "shape": None}]
    assert info.saved_input_example_info is not None, "an input example is stored with the model"
    assert info.metadata["image_size"] == 16 and info.metadata["resize"] == "resize_crop"


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_mlflow_models_serve_answers_rest_requests_with_the_pipelines_features(
    digits_project, tracking_uri, pipeline_features, tmp_path
):
    images, features = pipeline_features
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}/1",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=digits_project, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the uvicorn it execs stops with it
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"the server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on {base}/ping:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)

        answer = post(f"{base}/invocations", {"inputs": images[:64].tolist()})
        np.testing.assert_allclose(np.array(answer["predictions"]), features[:64], **TOLERANCE)
        both = post(f"{base}/invocations", {"inputs": images[:4].tolist(), "params": {"return_mu": True}})
        np.testing.assert_allclose(np.array(both["predictions"]["representation"]), features[:4], **TOLERANCE)
        assert np.array(both["predictions"]["mu"]).shape == (4, 16)
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(f"{base}/invocations", {"inputs": images[0].tolist()})  # one image, not a batch
        assert refused.value.code == 400
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_training_run_is_registered_once_and_a_new_one_gets_the_next_version(digits_project, tmp_path):
    bundle = TorchBundleDataset(str(digits_project / "data/06_models/aavae_model.pt")).load()
    images_test = load_imageset(digits_project / "data/03_primary/images_test")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("registry", artifact_location=str(tmp_path / "artifacts"))
    registry, dataset = {"model_name": "{dataset}-{objective}-encoder"}, {"name": "digits"}
    try:
        with mlflow.start_run(experiment_id=experiment):
            first = register_encoder(bundle, images_test, dataset, registry)
            again = register_encoder(bundle, images_test, dataset, registry)
            other = register_encoder({**bundle, "mlflow_run_id": "another-run"}, images_test, dataset, registry)
        disabled = register_encoder(bundle, images_test, dataset, {"enabled": False})
        no_run = register_encoder(bundle, images_test, dataset, registry)
        versions = MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")
    finally:
        mlflow.set_tracking_uri(previous)

    assert (first["version"], again["version"], other["version"]) == (1, 1, 2)
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert disabled["registered"] is False and "registry.enabled" in disabled["reason"]
    assert no_run["registered"] is False and "no active MLflow run" in no_run["reason"]
