"""Features: choose the model to evaluate, then its frozen-encoder features and the baselines'."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from aavae import tracking
from aavae.config import EvaluateConfig, ModelConfig, parse
from aavae.data.imageset import ImageSet
from aavae.evaluation import (
    baseline_encoder,
    bundle_from_checkpoint,
    extract_features,
    model_from_bundle,
)
from aavae.inference import resolve_precision
from aavae.models import ModelSpec
from aavae.training.batchnorm import recompute_batchnorm_statistics
from aavae.views import channel_tensors, normalize, original_view

log = logging.getLogger(__name__)


def resolve_model(
    aavae_model: dict[str, Any] | None, images_train: ImageSet, evaluate: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """The model bundle to evaluate: the trained ``aavae_model``, or ``evaluate.checkpoint``.

    A checkpoint of the paper's code is read into the architecture of the ``model`` parameters
    at this dataset's image size.
    """
    config = parse("evaluate", evaluate, EvaluateConfig)
    if config.checkpoint is None:
        if aavae_model is None:
            raise ValueError(
                "No model to evaluate: data/06_models/aavae_model.pt does not exist. Run "
                "`kedro run --pipeline pretrain` first, or set --params evaluate.checkpoint=<path>."
            )
        _record_evaluated_model(aavae_model, "data/06_models/aavae_model.pt")
        return aavae_model
    spec = parse("model", model, ModelConfig).spec(input_size=images_train.image_shape[0])
    try:
        bundle = bundle_from_checkpoint(config.checkpoint, spec, images_train.images, images_train.class_names)
    except (OSError, ValueError) as error:
        raise ValueError(f"evaluate.checkpoint={config.checkpoint!r}: {error}") from error
    _record_evaluated_model(bundle, config.checkpoint)
    return bundle


def _record_evaluated_model(bundle: dict[str, Any], source: str) -> None:
    """Tag the run with the architecture actually evaluated (``evaluated_model.*``).

    The run's ``model.*`` params are the configuration, which a bundle given as
    ``evaluate.checkpoint`` overrides; tags, since MLflow refuses to change a logged param.
    """
    if tracking.active_run_id() is None:
        return
    architecture = ModelSpec.from_dict(bundle["spec"]).architecture()
    tracking.set_tags({"evaluated_model.source": source,
                       **{f"evaluated_model.{key}": value for key, value in architecture.items()}})


def evaluation_device(accelerator: str) -> torch.device:
    """``evaluate.accelerator``: ``auto`` is the GPU when torch sees one."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator in ("gpu", "cuda") else accelerator)


def evaluation_autocast(config: EvaluateConfig) -> bool:
    """``evaluate.precision``: whether networks run under bf16 autocast during evaluation."""
    return resolve_precision(config.precision, evaluation_device(config.accelerator)) == "bf16-mixed"


def _features(encoder, imageset: ImageSet, bundle: dict[str, Any], config: EvaluateConfig) -> np.ndarray:
    norm = bundle["normalization"]
    return extract_features(encoder, imageset.images, norm["mean"], norm["std"], batch_size=config.batch_size,
                            device=evaluation_device(config.accelerator), autocast_bf16=evaluation_autocast(config),
                            original_resize=norm.get("original_resize"))


def extract_model_features(
    evaluation_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of the evaluated encoder for the labelled train split and the test split."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    encoder = model_from_bundle(evaluation_model).encoder
    if config.recompute_bn_stats:
        used = recompute_statistics_on(encoder, images_train, evaluation_model, config)
        log.info("Re-estimated the encoder's batch-norm statistics on %d un-augmented training images", used)
    return tuple(  # type: ignore[return-value]
        {"features": _features(encoder, split, evaluation_model, config), "labels": np.asarray(split.labels)}
        for split in (images_train, images_test)
    )


def recompute_statistics_on(encoder, images_train: ImageSet, bundle: dict[str, Any], config: EvaluateConfig,
                            max_images: int = 10_000) -> int:
    """Batch-norm statistics of ``encoder`` re-estimated on a seeded subset of clean training images."""
    device = evaluation_device(config.accelerator)
    norm = bundle["normalization"]
    mean, std = channel_tensors(norm["mean"], norm["std"], 3, device)
    rows = np.sort(np.random.default_rng(config.seed).permutation(len(images_train))[:max_images])
    encoder.to(device)

    def batches():
        for start in range(0, len(rows), config.batch_size):
            raw = torch.from_numpy(np.asarray(images_train.images[rows[start:start + config.batch_size]]))
            x = original_view(raw.to(device).permute(0, 3, 1, 2), norm.get("original_resize"))
            yield normalize(x, mean, std)

    try:
        recompute_batchnorm_statistics(encoder, batches())
    finally:
        encoder.cpu()
    return len(rows)


def extract_baseline_features(
    evaluation_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Baselines under the same protocol: the same architecture at random init; raw pixels."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    spec = ModelSpec.from_dict(evaluation_model["spec"])
    arrays: dict[str, np.ndarray] = {}
    for name in config.baselines:
        encoder = baseline_encoder(name, spec, config.seed)
        for split_name, split in (("train", images_train), ("test", images_test)):
            arrays[f"{name}_{split_name}"] = _features(encoder, split, evaluation_model, config)
    return arrays
