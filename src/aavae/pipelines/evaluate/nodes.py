"""Evaluate: linear eval and kNN beside the baselines in one table, an embedding map, a report."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from aavae import tracking
from aavae.common import provenance
from aavae.common.hardware import choose_device, runs_in_bf16
from aavae.common.progress import progress_scope
from aavae.config import EvaluateConfig, parse
from aavae.data.imageset import ImageSet
from aavae.evaluation import (
    ClassifierResult,
    accuracy_report,
    baseline_encoder,
    bundle_preprocessing,
    embed_2d,
    few_label_probe,
    knn_classify,
    linear_probe,
    model_from_bundle,
    paper_linear_eval,
)
from aavae.evaluation.transfer import DATA_UNRECORDED, TRANSFER, evaluation_images
from aavae.models import ModelSpec
from aavae.reporting.plots import confusion_matrix_figure, embedding_figure, figure_png
from aavae.reporting.report_html import (
    ReportImage,
    loss_curves_image,
    reconstructions_caption,
    render_report,
)
from aavae.views import Preprocessing

log = logging.getLogger(__name__)

LOSS_CURVES = ("train_loss", "val_loss")


def _score(train_x, test_x, train: ImageSet, test: ImageSet, preprocessing: Preprocessing, encoder: Callable[[], Any],
           class_names, config, label: str) -> tuple[dict[str, Any], ClassifierResult]:
    """Linear eval (the paper protocol trains on the images, with ``encoder()``, not on the
    features) and kNN of one set of features; their progress lines start with ``label``."""
    log.info("Scoring %s: linear eval (%s) and kNN on %s training features of %s dimensions",
             label, config.protocol, f"{len(train_x):,}", f"{train_x.shape[1]:,}")
    with progress_scope(label):
        if config.protocol == "paper":
            probe = paper_linear_eval(
                encoder(), train.images, train.labels, test.images, test.labels, preprocessing.mean,
                preprocessing.std, len(class_names), class_names, epochs=config.paper_epochs,
                batch_size=config.paper_batch_size, seed=config.seed, device=choose_device(config.accelerator),
                autocast_bf16=runs_in_bf16(config.precision, config.accelerator),
                original_resize=preprocessing.original_resize,
            )
        else:
            probe = linear_probe(train_x, train.labels, test_x, test.labels, len(class_names), class_names,
                                 val_fraction=config.probe_val_fraction, weight_decays=config.probe_weight_decays,
                                 seed=config.seed)
        knn = knn_classify(train_x, train.labels, test_x, test.labels,
                           len(class_names), class_names, k=config.knn_k, temperature=config.knn_temperature)
        few = few_label_probe(train_x, train.labels, test_x, test.labels,
                              len(class_names), labels_per_class=config.few_labels,
                              draws=config.few_label_draws, seed=config.seed)
    linear, neighbours = accuracy_report(probe), accuracy_report(knn)
    scores = {
        **{f"few_label_{s.labels_per_class}_top1": s.mean for s in few},
        **{f"few_label_{s.labels_per_class}_top1_sd": s.sd for s in few},
        "linear_top1": linear["top1"], "linear_top5": linear["top5"],
        "knn_top1": neighbours["top1"], "knn_top5": neighbours["top5"],
        "per_class": linear["per_class"], "probe_weight_decay": probe.chosen.get("weight_decay"),
    }
    return scores, probe


def evaluate(
    features_train: dict[str, np.ndarray],
    features_test: dict[str, np.ndarray],
    baseline_features: dict[str, np.ndarray],
    evaluation_model: dict[str, Any],
    images_train: ImageSet,
    images_test: ImageSet,
    evaluate: dict[str, Any],
    artifact_root: str,
) -> tuple[dict[str, Any], dict[str, Any], Figure, bytes]:
    """Score the model and each baseline; return metrics.json, MLflow metrics, a confusion matrix
    (as a figure, and as PNG bytes for the report)."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    images_train, images_test = evaluation_images(evaluation_model, images_train, images_test)
    _check_features(features_train, features_test, baseline_features, evaluation_model, images_train, artifact_root)
    class_names = _class_names(evaluation_model)
    split = (images_train, images_test, bundle_preprocessing(evaluation_model))
    spec = ModelSpec.from_dict(evaluation_model["spec"])
    scores, probe = _score(features_train["features"], features_test["features"], *split,
                           lambda: model_from_bundle(evaluation_model).encoder, class_names, config,
                           f"{evaluation_model.get('objective') or 'the model'} features")
    evaluated_on = evaluation_model.get("evaluated_on") or {}
    metrics: dict[str, Any] = {
        "dataset": evaluated_on.get("name", evaluation_model.get("dataset")),
        "data_sha256": evaluated_on.get("sha256"),
        "evaluation": evaluated_on.get("kind"),  # same_data | transfer | data_unrecorded
        "model_dataset": evaluation_model.get("dataset"),
        "model_data_sha256": (evaluation_model.get("data") or {}).get("sha256"),  # None: unrecorded
        "objective": evaluation_model.get("objective"),
        "epochs": evaluation_model.get("epochs"),
        "cut_by_time_limit": evaluation_model.get("cut_by_time_limit"),  # None: the whole schedule trained
        "training_run_id": evaluation_model.get("mlflow_run_id"),
        "checkpoint": evaluation_model.get("checkpoint"),
        "protocol": config.protocol,
        "few_label_draws": config.few_label_draws if config.few_labels else None,
        **scores,
        "baselines": {},
    }
    for name in config.baselines:
        baseline, _ = _score(baseline_features[f"{name}_train"], baseline_features[f"{name}_test"], *split,
                             lambda name=name: baseline_encoder(name, spec, config.seed), class_names, config,
                             f"baseline {name}")
        metrics["baselines"][name] = baseline

    random_init = metrics["baselines"].get("random_init", {}).get("linear_top1")
    log.info("linear top-1 %.4f (random init %s), kNN top-1 %.4f", metrics["linear_top1"],
             "not scored" if random_init is None else f"{random_init:.4f}", metrics["knn_top1"])
    flat = _flat_scores(metrics)
    tracking.set_tags({"training_run_id": metrics["training_run_id"], "protocol": config.protocol})
    if evaluated_on.get("kind") == TRANSFER:
        if metrics["training_run_id"]:
            log.info("Transfer evaluation: the scores stay in this run, not on training run %s.",
                     metrics["training_run_id"])
    else:  # the training run's own data (tracking refuses a run that recorded other data)
        tracking.log_metrics_to_run(metrics["training_run_id"], {f"eval_{k}": v for k, v in flat.items()},
                                    data_sha256=evaluated_on.get("sha256"))
    title = f"Linear eval ({config.protocol}) of {metrics['objective']} features (test)"
    figure = confusion_matrix_figure(probe.confusion, class_names, title)
    mlflow_metrics = {key: {"value": float(value), "step": 0} for key, value in flat.items()}
    return metrics, mlflow_metrics, figure, figure_png(figure)


def _class_names(evaluation_model: dict[str, Any]) -> list[str]:
    """The classes of the images evaluated on (a transfer evaluation's are not the model's)."""
    return list((evaluation_model.get("evaluated_on") or {}).get("class_names") or evaluation_model["class_names"])


def _check_features(features_train, features_test, baseline_features, evaluation_model, images, root) -> None:
    """Features scored together must come from the evaluated model and these images."""
    model = provenance.model_fingerprint(evaluation_model)
    for name, arrays in (("features_train", features_train), ("features_test", features_test)):
        provenance.check_features(f"{root}/04_feature/{name}.npz", arrays, model, images.fingerprint)
    if baseline_features:
        provenance.check_features(f"{root}/04_feature/baseline_features.npz", baseline_features, None,
                                  images.fingerprint)


def _flat_scores(metrics: dict[str, Any]) -> dict[str, float]:
    few = tuple(k for k in metrics if k.startswith("few_label_") and k != "few_label_draws")
    keys = (*few, "linear_top1", "linear_top5", "knn_top1", "knn_top5")
    flat = {k: metrics[k] for k in keys}
    for name, baseline in metrics["baselines"].items():
        flat.update({f"{name}_{k}": baseline[k] for k in keys})
    return flat


def plot_embedding(
    features_test: dict[str, np.ndarray], evaluation_model: dict[str, Any], evaluate: dict[str, Any],
    artifact_root: str,
) -> tuple[Figure, bytes]:
    """A 2-D map (t-SNE or PCA) of the test features, coloured by class."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    provenance.check_features(f"{artifact_root}/04_feature/features_test.npz", features_test,
                              provenance.model_fingerprint(evaluation_model),
                              (evaluation_model.get("evaluated_on") or {}).get("sha256"))
    coords, labels, _ = embed_2d(features_test["features"], features_test["labels"],
                                 method=config.embedding_method, max_points=config.embedding_points,
                                 seed=config.seed)
    method = "t-SNE" if config.embedding_method == "tsne" else "PCA"
    title = f"{method} of {len(coords)} test features ({evaluation_model.get('objective')})"
    figure = embedding_figure(coords, labels, _class_names(evaluation_model), title)
    return figure, figure_png(figure)


def write_report(
    metrics: dict[str, Any],
    evaluation_model: dict[str, Any],
    confusion_matrix_png: bytes,
    embedding_png: bytes,
    reporting_images: dict[str, Callable[[], Any]],
    artifact_root: str,
) -> str:
    """The one-page HTML report: accuracy tables, figures and the training parameters; a
    transfer evaluation, or one of a model whose training data is unknown, says so."""
    run_id = evaluation_model.get("mlflow_run_id")
    record = _training_run(run_id)
    notes = []
    if record is None:
        params, curves = _bundle_params(evaluation_model), {}
        where = f"run {run_id} is not in this MLflow store" if run_id else "no MLflow training run is recorded"
        notes.append(f"Parameters from the evaluated model's bundle ({where}).")
    else:
        params, curves = record
        notes.append(f"Parameters and loss curves from MLflow run {run_id}.")
    images = [image for image in [loss_curves_image(curves, metrics.get("epochs"))] if image is not None]
    shown = [("view_preview", "Training views", "Each training image beside views drawn by the policy.")]
    if not evaluation_model.get("checkpoint"):  # another model's reconstructions would mislead
        shown.append(("reconstructions", "Reconstructions", reconstructions_caption(metrics.get("epochs"))))
    for key, title, caption in shown:
        if key in reporting_images:
            images.append(ReportImage(title, _png(reporting_images[key]()), caption))
    images.append(ReportImage("Confusion matrix", confusion_matrix_png, "Linear eval on the test split."))
    images.append(ReportImage("Embedding", embedding_png, "Test features in 2-D, coloured by true class."))
    title = f"AAVAE report: {metrics.get('objective')} on {metrics.get('dataset') or 'this dataset'}"
    if metrics.get("evaluation") == TRANSFER:
        title += f" (transfer from {metrics.get('model_dataset') or 'another dataset'})"
    elif metrics.get("evaluation") == DATA_UNRECORDED:
        title += " (training data unknown)"
    address = tracking.runs_page_address()
    log.info("The report goes to %s/08_reporting/report.html.%s", artifact_root, "" if address is None else
             f" The runs and their curves: `mlflow ui` in the project folder, then open {address}")
    return render_report(metrics, params, images, title=title, notes=notes)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _training_run(run_id: str | None) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]] | None:
    """Params and loss histories of the training run, or None when this store does not have it."""
    if not run_id:
        return None
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        curves = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                  for key in LOSS_CURVES if key in run.data.metrics}
    except Exception as error:  # noqa: BLE001 - the report is still useful without them
        log.warning("Training run %s not readable from MLflow (%s); the report uses the bundle.", run_id, error)
        return None
    return dict(run.data.params), curves


def _bundle_params(bundle: dict[str, Any]) -> dict[str, Any]:
    keys = ("dataset", "objective", "kl_coeff", "epochs", "num_parameters", "checkpoint")
    return {"model": bundle.get("spec", {}), "normalization": bundle.get("normalization", {}),
            **{k: bundle[k] for k in keys if bundle.get(k) is not None}}
