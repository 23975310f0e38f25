"""Features: frozen-encoder features of the train and test images, and of the baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aavae.config import EvaluateConfig, parse
from aavae.data.imageset import ImageSet
from aavae.evaluation import extract_features
from aavae.models import AAVAENet, ModelSpec, build_model


def model_from_bundle(bundle: dict[str, Any]) -> AAVAENet:
    net = build_model(ModelSpec.from_dict(bundle["spec"]))
    net.load_state_dict(bundle["state_dict"])
    return net.eval()


def _features(net: AAVAENet, imageset: ImageSet, bundle: dict[str, Any], batch_size: int) -> np.ndarray:
    norm = bundle["normalization"]
    return extract_features(net.encoder, imageset.images, norm["mean"], norm["std"], batch_size=batch_size)


def extract_model_features(
    aavae_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of the trained encoder for the labelled train split and the test split."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    net = model_from_bundle(aavae_model)
    return tuple(  # type: ignore[return-value]
        {"features": _features(net, split, aavae_model, config.batch_size), "labels": np.asarray(split.labels)}
        for split in (images_train, images_test)
    )


def extract_baseline_features(
    aavae_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Baselines under the same protocol: the same architecture at random init; raw pixels."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    arrays: dict[str, np.ndarray] = {}
    if "random_init" in config.baselines:
        torch.manual_seed(config.seed)
        net = build_model(ModelSpec.from_dict(aavae_model["spec"])).eval()
        for name, split in (("train", images_train), ("test", images_test)):
            arrays[f"random_init_{name}"] = _features(net, split, aavae_model, config.batch_size)
    if "raw_pixels" in config.baselines:
        mean = np.asarray(aavae_model["normalization"]["mean"], np.float32)
        std = np.asarray(aavae_model["normalization"]["std"], np.float32)
        for name, split in (("train", images_train), ("test", images_test)):
            pixels = (np.asarray(split.images, np.float32) / 255.0 - mean) / std
            arrays[f"raw_pixels_{name}"] = pixels.reshape(len(split), -1)
    return arrays
