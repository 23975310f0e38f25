"""The trained encoder as an MLflow pyfunc model: uint8 images in, representations out.

A user who finds the best run in ``mlflow ui`` can load, register and serve its encoder:

    model = mlflow.pyfunc.load_model("models:/digits-aavae-encoder/1")
    features = model.predict(images)                        # uint8 N x H x W x C, any H, W
    both = model.predict(images, params={"return_mu": True})  # {"representation", "mu"}

and ``mlflow models serve -m models:/digits-aavae-encoder/1 --env-manager local`` answers
``POST /invocations`` with ``{"inputs": <nested list of uint8 images>}``.

The model's artifact is the model bundle itself (``aavae_model.pt``, loaded with
``weights_only=True``), and all the work is :class:`aavae.inference.ImageEncoder`'s: the
same resizing as ingest, the same normalisation and feature extraction as the features
pipeline. The model is logged "from code" (:mod:`aavae.mlflow_model_code`), not pickled,
and the project's ``aavae`` package travels with it (``code_paths``), so loading it runs
only this project's code, and a fresh environment with the listed requirements can load it.

This module is MLflow glue, beside :mod:`aavae.tracking`; the layers below never import it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

import aavae
from aavae.inference import MU, REPRESENTATION, ImageEncoder, Preprocessing
from aavae.quiet import filter_unactionable_warnings

filter_unactionable_warnings()  # before PythonModel subclasses are defined (here, kedro-mlflow)

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "model_bundle"
RETURN_MU = "return_mu"
#: Packages the model needs besides the ``aavae`` code it carries.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pillow", "pydantic")


class EncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`aavae.inference.ImageEncoder` (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        bundle = torch.load(context.artifacts[BUNDLE_ARTIFACT], map_location="cpu", weights_only=True)
        self.encoder = ImageEncoder.from_bundle(bundle, resize=context.model_config["resize"])

    # np.ndarray is a type hint MLflow accepts without inferring a schema: the signature says
    # what the input is, and MLflow does not warn about a missing hint.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """uint8 ``N x H x W x C`` images -> float32 ``(N, feature_dim)`` representations, or
        with ``params={"return_mu": True}`` a dict of them and the latent means ``mu``."""
        images = np.asarray(model_input)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"The encoder takes a batch of uint8 images, N x H x W x C with C = 1, 3 or 4 "
                f"(any H and W), got {images.dtype} with shape {images.shape}."
            )
        return self.encoder.encode(images, return_mu=bool((params or {}).get(RETURN_MU, False)))


def signature(feature_dim: int) -> ModelSignature:
    """uint8 images of any size in; float32 representations out; the ``return_mu`` switch."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feature_dim))]),
        params=ParamSchema([ParamSpec(RETURN_MU, "boolean", False)]),
    )


def log_encoder_model(
    bundle: Mapping[str, Any],
    resize: str,
    registered_name: str,
    input_example: np.ndarray,
    tags: Mapping[str, str] | None = None,
) -> ModelInfo:
    """Log the bundle's encoder as a pyfunc model into the active run and register it.

    Returns MLflow's ``ModelInfo``; ``registered_model_version`` is the new version.
    """
    encoder = ImageEncoder.from_bundle(bundle, resize=resize)  # fails here, not at serving
    metadata = {
        **encoder.preprocessing.to_dict(),
        "feature_dim": encoder.feature_dim,
        "latent_dim": encoder.latent_dim,
        "input": "uint8 N x H x W x C images of any size (C = 1, 3 or 4)",
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
                model_config={"resize": resize},
                code_paths=[str(code)],
                signature=signature(encoder.feature_dim),
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
    previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


TRAINING_RUN_TAG = "training_run_id"


def version_of_training_run(name: str, training_run_id: str | None) -> int | None:
    """The registered version of ``name`` holding the model of that training run, if any."""
    if not training_run_id:
        return None
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(TRAINING_RUN_TAG) == training_run_id:
            return int(version.version)
    return None


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
        self.preprocessing = Preprocessing(
            image_size=int(metadata["image_size"]), resize=str(metadata["resize"]),
            mean=tuple(metadata["mean"]), std=tuple(metadata["std"]),
            original_resize=metadata.get("original_resize"),
        )
        self.identity = model_uri

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.ascontiguousarray(images)), np.float32)


def _pinned(package: str) -> str:
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


__all__ = [
    "MU", "REPRESENTATION", "EncoderModel", "RegisteredEncoder", "log_encoder_model", "signature",
]
