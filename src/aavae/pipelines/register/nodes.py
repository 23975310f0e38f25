"""Register: the trained encoder as an MLflow model, one registered version per training run."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import numpy as np

from aavae import tracking
from aavae.config import DatasetConfig, RegistryConfig, parse
from aavae.data.imageset import ImageSet
from aavae.serving.contract import InputLimits
from aavae.serving.mlflow_model import TRAINING_RUN_TAG, log_encoder_model, version_of_training_run

log = logging.getLogger(__name__)

EXAMPLE_IMAGES = 2  # test images stored with the model as its input example


def register_encoder(
    aavae_model: dict[str, Any], images_test: ImageSet, dataset: dict[str, Any], registry: dict[str, Any]
) -> dict[str, Any]:
    """Log the encoder with its preprocessing into the pretrain run and register it; return what
    ``registered_model.json`` records. The model resizes images as ingest did (the bundle's
    ``dataset.resize``), within its ``registry`` limits (fixed at logging; loading may override
    them). A training run already registered under the name gets no second version."""
    config = parse("registry", registry, RegistryConfig)
    # as its training images were brought to size: the bundle records it (older bundles: the
    # environment's dataset.resize)
    resize = (aavae_model.get("data") or {}).get("resize") or parse("dataset", dataset, DatasetConfig).resize
    training_run = aavae_model.get("mlflow_run_id")
    if not config.enabled:
        log.info("registry.enabled is false: the encoder is not logged as an MLflow model.")
        return {"registered": False, "reason": "registry.enabled is false"}
    if tracking.active_run_id() is None:
        log.warning("No MLflow run is open (tracking is disabled for this pipeline in "
                    "conf/base/mlflow.yml): the encoder is not registered.")
        return {"registered": False, "reason": "no active MLflow run"}

    name = config.model_name.format(dataset=aavae_model.get("dataset") or "model",
                                    objective=aavae_model.get("objective") or "encoder")
    version = version_of_training_run(name, training_run)
    if version is None:
        example = np.ascontiguousarray(images_test.images[:EXAMPLE_IMAGES])
        limits = InputLimits(config.max_image_side, config.max_batch_size)
        info = log_encoder_model(aavae_model, resize, name, example, limits,
                                 tags={TRAINING_RUN_TAG: str(training_run)})
        version = int(info.registered_model_version)
        mlflow.MlflowClient().set_model_version_tag(name, str(version), TRAINING_RUN_TAG, str(training_run))
        log.info("Registered the encoder as MLflow model '%s' version %d (models:/%s/%d)",
                 name, version, name, version)
    else:
        log.info("Training run %s is already registered as '%s' version %d: no new version.",
                 training_run, name, version)
    tracking.set_tags({"registered_model": f"{name}/{version}"})
    return {
        "registered": True, "name": name, "version": version,
        "model_uri": f"models:/{name}/{version}", "training_run_id": training_run,
        "registered_by_run_id": tracking.active_run_id(), "resize": resize,
        "tracking_uri": mlflow.get_tracking_uri(),  # the store that holds it (readers use this one)
    }
