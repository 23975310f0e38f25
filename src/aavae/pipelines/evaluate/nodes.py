"""Evaluate: linear probe and kNN on frozen features, beside the baselines, in one table."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from aavae import tracking
from aavae.config import EvaluateConfig, parse
from aavae.evaluation import accuracy_report, knn_classify, linear_probe
from aavae.plots import confusion_matrix_figure

log = logging.getLogger(__name__)


def _score(train_x, train_y, test_x, test_y, class_names, config: EvaluateConfig) -> tuple[dict[str, Any], Any]:
    num_classes = len(class_names)
    probe = linear_probe(
        train_x, train_y, test_x, test_y, num_classes, class_names,
        val_fraction=config.probe_val_fraction, weight_decays=config.probe_weight_decays, seed=config.seed,
    )
    knn = knn_classify(train_x, train_y, test_x, test_y, num_classes, class_names,
                       k=config.knn_k, temperature=config.knn_temperature)
    linear, neighbours = accuracy_report(probe), accuracy_report(knn)
    scores = {
        "linear_top1": linear["top1"], "linear_top5": linear["top5"],
        "knn_top1": neighbours["top1"], "knn_top5": neighbours["top5"],
        "per_class": linear["per_class"], "probe_weight_decay": probe.chosen.get("weight_decay"),
    }
    return scores, probe


def evaluate(
    features_train: dict[str, np.ndarray],
    features_test: dict[str, np.ndarray],
    baseline_features: dict[str, np.ndarray],
    aavae_model: dict[str, Any],
    evaluate: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], Figure]:
    """Score the model and each baseline; return metrics.json, MLflow metrics, a confusion matrix."""
    config = parse("evaluate", evaluate, EvaluateConfig)
    class_names = list(aavae_model["class_names"])
    train_y, test_y = features_train["labels"], features_test["labels"]
    scores, probe = _score(features_train["features"], train_y, features_test["features"], test_y,
                           class_names, config)
    metrics: dict[str, Any] = {
        "dataset": aavae_model.get("dataset"),
        "objective": aavae_model.get("objective"),
        "epochs": aavae_model.get("epochs"),
        "training_run_id": aavae_model.get("mlflow_run_id"),
        **scores,
        "baselines": {},
    }
    for name in config.baselines:
        baseline, _ = _score(baseline_features[f"{name}_train"], train_y,
                             baseline_features[f"{name}_test"], test_y, class_names, config)
        metrics["baselines"][name] = baseline

    log.info("linear top-1 %.4f (random init %s), kNN top-1 %.4f", metrics["linear_top1"],
             metrics["baselines"].get("random_init", {}).get("linear_top1"), metrics["knn_top1"])
    flat = _flat_scores(metrics)
    tracking.set_tags({"training_run_id": metrics["training_run_id"]})
    tracking.log_metrics_to_run(metrics["training_run_id"], {f"eval_{k}": v for k, v in flat.items()})
    figure = confusion_matrix_figure(
        probe.confusion, class_names, f"Linear probe on {metrics['objective']} features (test)"
    )
    mlflow_metrics = {key: {"value": float(value), "step": 0} for key, value in flat.items()}
    return metrics, mlflow_metrics, figure


def _flat_scores(metrics: dict[str, Any]) -> dict[str, float]:
    keys = ("linear_top1", "linear_top5", "knn_top1", "knn_top5")
    flat = {k: metrics[k] for k in keys}
    for name, baseline in metrics["baselines"].items():
        flat.update({f"{name}_{k}": baseline[k] for k in keys})
    return flat
