"""The trained encoder as an MLflow pyfunc model: uint8 images in, representations out
(docs/serving.md shows how to load, serve and call it).

Every input, in-process and over HTTP, passes :func:`aavae.serving.contract.check_image_batch`
before any work, within the model config's limits (``registry.*`` at logging; the schema's
defaults for a model logged without them). The signature therefore declares no input schema:
with one, MLflow would cast a request to uint8 before the model sees it (floats truncated to a
black image) and refuse other inputs in its own words, printing the whole input.

The model's artifact is the model bundle itself, and all the work is
:class:`aavae.serving.inference.ImageEncoder`'s. It is logged "from code"
(:mod:`aavae.serving.mlflow_model_code`), not pickled, with the ``aavae`` package
(``code_paths``): loading it runs only this project's code, in any environment with the
listed requirements.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

import aavae
from aavae.common.quiet import filter_unactionable_warnings
from aavae.common.weights import load_weights
from aavae.config import RegistryConfig
from aavae.serving.contract import (
    CONTRACT,
    RETURN_MU,
    ImageBatchError,
    InputLimits,
    check_image_batch,
)
from aavae.serving.inference import ImageEncoder, ServingPreprocessing

filter_unactionable_warnings()  # before PythonModel subclasses are defined (here, kedro-mlflow)

BUNDLE_ARTIFACT = "model_bundle"
#: Packages the model needs besides the ``aavae`` code it carries.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pillow", "pydantic")


class RefusedImages(MlflowException, ValueError):
    """Images outside the model's contract: MLflow's INVALID_PARAMETER_VALUE, HTTP 400, and a
    ValueError in-process. It keeps its own message, which MLflow's scoring server would rewrite
    to ``Failed to predict data '<the whole input>'. Error: ...``: megabytes of pixels."""

    def __init__(self, message: str) -> None:
        self._own_message = message  # before MlflowException.__init__ assigns self.message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._own_message

    @message.setter
    def message(self, rewritten: str) -> None:
        """The scoring server's rewrite, which would quote the request, is dropped."""


def input_limits(model_config: Mapping[str, Any]) -> InputLimits:
    """The limits in a model config; a model logged before they existed gets the defaults."""
    defaults = RegistryConfig()
    values = {name: model_config.get(name, getattr(defaults, name))
              for name in ("max_image_side", "max_batch_size")}
    try:
        return InputLimits(**values)
    except ValueError as error:
        raise ValueError(
            f"The encoder model's config is invalid: {error}. It is set when the model is "
            "logged (registry.max_image_side, registry.max_batch_size) and may be overridden "
            "at loading: mlflow.pyfunc.load_model(uri, model_config={...}), or the "
            "MLFLOW_PYFUNC_INFERENCE_CONFIG environment variable of `mlflow models serve`."
        ) from None


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`aavae.serving.inference.ImageEncoder` (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        bundle = load_weights(context.artifacts[BUNDLE_ARTIFACT])
        self.encoder = ImageEncoder.from_bundle(bundle, resize=context.model_config["resize"])
        self.limits = input_limits(context.model_config)
        # The scoring server runs each request in its own thread: one request's images are
        # encoded at a time, so memory holds one admitted batch's work and the CPU's threads
        # are not shared among several convolutions.
        self._encoding = threading.Lock()

    # np.ndarray is a type hint MLflow accepts without inferring a schema or checking the
    # input against it (check_image_batch does), and MLflow does not warn about a missing hint.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """uint8 ``N x H x W x C`` images -> float32 ``(N, feature_dim)`` representations (with
        ``return_mu`` a dict of them and ``mu``), or :class:`RefusedImages` before any resizing."""
        try:
            images = check_image_batch(model_input, self.limits)
        except ImageBatchError as error:
            raise RefusedImages(str(error)) from None
        with self._encoding:
            return self.encoder.encode(images, return_mu=bool((params or {}).get(RETURN_MU, False)))


def log_encoder_model(
    bundle: Mapping[str, Any],
    resize: str,
    registered_name: str,
    input_example: np.ndarray,
    limits: InputLimits,
    tags: Mapping[str, str] | None = None,
) -> ModelInfo:
    """Log the bundle's encoder as a pyfunc model into the active run and register it; ``limits``
    go into the model config (which loading can override) and its metadata."""
    encoder = ImageEncoder.from_bundle(bundle, resize=resize)  # fails here, not at serving
    metadata = {
        **encoder.preprocessing.to_dict(),
        "feature_dim": encoder.feature_dim,
        "latent_dim": encoder.latent_dim,
        "input": f"{CONTRACT}, at most max_batch_size images of at most max_image_side "
                 "pixels a side, any one size per request",
        "max_image_side": limits.max_image_side,
        "max_batch_size": limits.max_batch_size,
        "output": "float32 N x feature_dim representations; params return_mu=true adds mu",
        **{key: str(bundle.get(key)) for key in ("dataset", "objective", "mlflow_run_id")},
    }
    with tempfile.TemporaryDirectory() as folder:
        bundle_path = Path(folder) / "aavae_model.pt"
        torch.save(dict(bundle), bundle_path)
        code = Path(folder) / "aavae"  # the package without caches, to travel with the model
        shutil.copytree(Path(aavae.__file__).parent, code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with _no_artifact_progress_bars():
            return mlflow.pyfunc.log_model(
                name="encoder",
                python_model=str(Path(__file__).with_name("mlflow_model_code.py")),
                artifacts={BUNDLE_ARTIFACT: str(bundle_path)},
                model_config={"resize": resize, "max_image_side": limits.max_image_side,
                              "max_batch_size": limits.max_batch_size},
                code_paths=[str(code)],
                signature=ModelSignature(  # no input schema: see the module docstring
                    inputs=None,
                    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.feature_dim))]),
                    params=ParamSchema([ParamSpec(RETURN_MU, "boolean", False)]),
                ),
                input_example=np.ascontiguousarray(input_example),
                pip_requirements=[_pinned(name) for name in REQUIREMENTS],
                metadata=metadata,
                registered_model_name=registered_name,
                tags=dict(tags or {}),
            )


@contextlib.contextmanager
def _no_artifact_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar for every artifact copy of a model it validates: noise in
    a pipeline's log, and a long one for a model with code."""
    bars = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    previous = bars.get_raw()
    bars.set("false")
    try:
        yield
    finally:
        if previous is None:
            bars.unset()
        else:
            bars.set(previous)


TRAINING_RUN_TAG = "training_run_id"


def version_of_training_run(name: str, training_run_id: str | None) -> int | None:
    """The registered version of ``name`` holding the model of that training run, if any."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'") if training_run_id else []
    return next((int(v.version) for v in versions if v.tags.get(TRAINING_RUN_TAG) == training_run_id), None)


class RegisteredEncoder:
    """A logged or registered encoder model, for the embed pipeline (``embed.model_uri``)."""

    def __init__(self, model_uri: str) -> None:
        try:
            self.model = mlflow.pyfunc.load_model(model_uri)
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a bad URI
            raise ValueError(
                f"embed.model_uri={model_uri!r} cannot be loaded: {error} Give a registered "
                "model as models:/<name>/<version> (see `mlflow ui`, tab Models), or leave "
                "embed.model_uri unset to use data/06_models/aavae_model.pt."
            ) from None
        metadata = self.model.metadata.metadata or {}
        if "image_size" not in metadata:
            raise ValueError(
                f"embed.model_uri={model_uri!r} is not an encoder logged by this project: its "
                "MLmodel metadata has no image_size (expected the pretrain pipeline's model)."
            )
        self.preprocessing = ServingPreprocessing.from_dict(metadata, source=f"{model_uri}'s MLmodel metadata")
        self.identity = model_uri
        self.limits: InputLimits = self.model.unwrap_python_model().limits

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Representations of ``images``, sent in batches the model's max_batch_size allows
        (an empty batch is sent as it is, for the model to refuse)."""
        step = self.limits.max_batch_size
        return np.concatenate([
            np.asarray(self.model.predict(np.ascontiguousarray(images[start:start + step])), np.float32)
            for start in range(0, max(len(images), 1), step)
        ])


def _pinned(package: str) -> str:
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package

