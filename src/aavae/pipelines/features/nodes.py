"""Features: choose the model to evaluate, then its frozen-encoder features and the baselines'."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from aavae import tracking
from aavae.common import provenance
from aavae.common.hardware import choose_device, choose_precision, runs_in_bf16
from aavae.config import DatasetConfig, EvaluateConfig, ModelConfig, ViewsConfig, parse
from aavae.data.card import check_ingested
from aavae.data.imageset import ImageSet
from aavae.evaluation import (
    baseline_encoder,
    bundle_from_checkpoint,
    bundle_preprocessing,
    extract_features,
    model_from_bundle,
)
from aavae.evaluation.transfer import DATA_UNRECORDED, SAME_DATA, TRANSFER, evaluation_images
from aavae.models import ModelSpec
from aavae.training.module import reestimate_batchnorm
from aavae.views import resolve_preprocessing

log = logging.getLogger(__name__)


def resolve_model(
    aavae_model: dict[str, Any] | None,
    images_train: ImageSet,
    images_test: ImageSet,
    dataset_card: dict[str, Any],
    dataset: dict[str, Any],
    evaluate: dict[str, Any],
    model: dict[str, Any],
    views: dict[str, Any],
    artifact_root: str,
) -> dict[str, Any]:
    """The model bundle to evaluate, the trained ``aavae_model`` or ``evaluate.checkpoint``, with
    ``evaluated_on``: the ingested images (the environment's dataset, two classes or more) and
    whether they are the model's own training data. The trained model is scored on its own data
    only; a checkpoint trained on other data is a transfer evaluation (said in the log, the run
    and the report); one of the paper's code is read into the ``model`` parameters' architecture
    with the recipe's preprocessing (``views.mean``/``std``/``original_resize``), as its linear
    evaluation does."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    wanted = parse("dataset", dataset, DatasetConfig)
    check_ingested(dataset_card, wanted.name, wanted.path, f"{artifact_root}/03_primary")
    data = provenance.same_images(images_train, images_test)
    provenance.check_data(f"{artifact_root}/03_primary/dataset_card.json", dataset_card.get("sha256"), data,
                          "Run `kedro run --pipeline ingest` (with your --env and --params) again.")
    images = provenance.data_identity(dataset_card)
    if len(images_train.class_names) < 2:
        raise ValueError(f"{provenance.describe_data(images)} has {len(images_train.class_names)} class "
                         f"({', '.join(images_train.class_names)}): linear evaluation and kNN need two or more. Ingest "
                         "images of a second class, or embed these with `kedro run --pipeline embed`.")
    trained_model = f"{artifact_root}/06_models/aavae_model.pt"
    if config.checkpoint is None:
        if aavae_model is None:
            raise ValueError(
                f"No model to evaluate: {trained_model} does not exist. Run "
                "`kedro run --pipeline pretrain` first, or set --params evaluate.checkpoint=<path>."
            )
        source, bundle = trained_model, aavae_model
        _refuse_other_data(bundle, images, trained_model)
    else:
        source = config.checkpoint
        spec = ModelSpec(**parse("model", model, ModelConfig).model_dump(), input_size=images_train.image_shape[0])
        views_config = parse("views", views, ViewsConfig)
        preprocessing = resolve_preprocessing(views_config.mean, views_config.std,
                                              views_config.original_resize, images_train.images)
        try:
            bundle = bundle_from_checkpoint(config.checkpoint, spec, preprocessing, images_train.class_names)
        except (OSError, ValueError) as error:
            raise ValueError(f"evaluate.checkpoint={config.checkpoint!r}: {error}") from error
    kind = _evaluation_kind(bundle, images, source)
    _record_evaluated_model(bundle, source, kind, images)
    return {**bundle, "evaluated_on": {**images, "kind": kind, "class_names": list(images_train.class_names)}}


def _refuse_other_data(bundle: dict[str, Any], images: dict[str, Any], trained_model: str) -> None:
    """The trained model is scored on its own data only: anything else needs asking for."""
    trained_on = bundle.get("data") or {}
    if not trained_on.get("sha256") or trained_on["sha256"] == images.get("sha256"):
        return
    run = bundle.get("mlflow_run_id")
    raise provenance.ProvenanceError(
        f"{trained_model} was trained on {provenance.describe_data(trained_on)}"
        f"{f' (MLflow run {run})' if run else ''}, but the images ingested now are "
        f"{provenance.describe_data(images)}: scoring it on them would report another dataset's "
        "accuracy as this model's. Either ingest its own data again (`kedro run --pipeline ingest` "
        "with the --env and dataset.* parameters it was trained with), or evaluate it on these "
        f"images as a transfer evaluation with --params evaluate.checkpoint={trained_model}, or "
        "train on these images (`kedro run --pipeline pretrain`)."
    )


def _evaluation_kind(bundle: dict[str, Any], images: dict[str, Any], source: str) -> str:
    """``evaluated_on.kind``: the model's own data; other data (transfer); a file that does not
    record its data (the paper's checkpoints, files written before models recorded it)."""
    trained_on = bundle.get("data") or {}
    if not trained_on.get("sha256"):
        log.warning("%s does not record the data it was trained on: whether it is evaluated on its "
                    "own data is unknown, and the results say so.", source)
        return DATA_UNRECORDED
    if trained_on["sha256"] == images.get("sha256"):
        return SAME_DATA
    side, model_side = images["image_shape"][0], ModelSpec.from_dict(bundle["spec"]).input_size
    resized = f"; images brought from {side} to {model_side} px" if side != model_side else ""
    log.warning("Transfer evaluation: %s was trained on %s and is evaluated on %s%s. Its scores are "
                "not copied onto its training run.", source, provenance.describe_data(trained_on),
                provenance.describe_data(images), resized)
    return TRANSFER


def _record_evaluated_model(bundle: dict[str, Any], source: str, kind: str, images: dict[str, Any]) -> None:
    """Tag the run with the architecture actually evaluated (``evaluated_model.*``: the run's
    ``model.*`` params are the configuration, which ``evaluate.checkpoint`` overrides, and MLflow
    refuses to change a logged param), the data it was trained on and is evaluated on."""
    if tracking.active_run_id() is None:
        return
    architecture = ModelSpec.from_dict(bundle["spec"]).architecture()
    trained_on = bundle.get("data") or {}
    tracking.set_tags({"evaluated_model.source": source,
                       **{f"evaluated_model.{key}": value for key, value in architecture.items()},
                       "evaluated_model.data_sha256": trained_on.get("sha256") or "unrecorded",
                       "evaluated_model.weights_sha256": provenance.model_fingerprint(bundle),
                       "data.name": images.get("name"), "data.sha256": images.get("sha256"),
                       "data.source": images.get("source"), "evaluation.kind": kind})


def _features(encoder, imageset: ImageSet, bundle: dict[str, Any], config: EvaluateConfig) -> np.ndarray:
    preprocessing = bundle_preprocessing(bundle)
    return extract_features(encoder, imageset.images, preprocessing.mean, preprocessing.std, batch_size=config.batch_size,
                            device=choose_device(config.accelerator), autocast_bf16=runs_in_bf16(config.precision, config.accelerator),
                            original_resize=preprocessing.original_resize)


def extract_model_features(
    evaluation_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of the evaluated encoder for the labelled train split and the test split, each
    recording the model's and the images' fingerprints and the settings that made them."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    images_train, images_test = evaluation_images(evaluation_model, images_train, images_test, say=True)
    encoder = model_from_bundle(evaluation_model).encoder
    if config.recompute_bn_stats:
        used = recompute_statistics_on(encoder, images_train, evaluation_model, config)
        log.info("Re-estimated the encoder's batch-norm statistics on %d un-augmented training images", used)
    made_from = {"model_sha256": provenance.model_fingerprint(evaluation_model),
                 provenance.DATA_SHA256: images_train.fingerprint,
                 "precision": choose_precision(config.precision, choose_device(config.accelerator)),
                 "recompute_bn_stats": config.recompute_bn_stats}
    return tuple(  # type: ignore[return-value]
        provenance.stamp({"features": _features(encoder, split, evaluation_model, config),
                          "labels": np.asarray(split.labels)}, split=split.split, **made_from)
        for split in (images_train, images_test)
    )


def recompute_statistics_on(encoder, images_train: ImageSet, bundle: dict[str, Any], config: EvaluateConfig,
                            max_images: int = 10_000) -> int:
    """Batch-norm statistics of ``encoder`` re-estimated on a seeded subset of clean training images."""
    device = choose_device(config.accelerator)
    rows = np.sort(np.random.default_rng(config.seed).permutation(len(images_train))[:max_images])
    try:
        return reestimate_batchnorm(encoder.to(device), images_train.images, rows, bundle_preprocessing(bundle),
                                    config.batch_size, device)
    finally:
        encoder.cpu()


def extract_baseline_features(
    evaluation_model: dict[str, Any], images_train: ImageSet, images_test: ImageSet, evaluate: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Baselines under the same protocol: the same architecture at random init; raw pixels."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    images_train, images_test = evaluation_images(evaluation_model, images_train, images_test)
    spec = ModelSpec.from_dict(evaluation_model["spec"])
    arrays: dict[str, np.ndarray] = {}
    for name in config.baselines:
        encoder = baseline_encoder(name, spec, config.seed)
        for split_name, split in (("train", images_train), ("test", images_test)):
            arrays[f"{name}_{split_name}"] = _features(encoder, split, evaluation_model, config)
    return provenance.stamp(arrays, **{provenance.DATA_SHA256: images_train.fingerprint},
                            architecture=spec.architecture(), seed=config.seed)
