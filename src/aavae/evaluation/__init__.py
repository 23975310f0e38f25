"""Measure learned representations: feature extraction, a linear probe and a kNN classifier.

Everything here is plain PyTorch/NumPy and works on features from any frozen encoder, one
module per concern (each says what it does and why). What the pipelines, the MLflow model, the
benchmarks and a notebook call is re-exported here (``from aavae.evaluation import linear_probe``).
"""

from aavae.evaluation.bundles import (
    baseline_encoder,
    bundle_from_checkpoint,
    bundle_preprocessing,
    make_bundle,
    model_from_bundle,
)
from aavae.evaluation.features import embed_2d, extract_features
from aavae.evaluation.knn import knn_classify, nearest_neighbours
from aavae.evaluation.paper_protocol import paper_linear_eval
from aavae.evaluation.probe import few_label_probe, linear_probe
from aavae.evaluation.scoring import ClassifierResult, accuracy_report

__all__ = [
    "ClassifierResult",
    "accuracy_report",
    "baseline_encoder",
    "bundle_from_checkpoint",
    "bundle_preprocessing",
    "embed_2d",
    "extract_features",
    "few_label_probe",
    "knn_classify",
    "linear_probe",
    "make_bundle",
    "model_from_bundle",
    "nearest_neighbours",
    "paper_linear_eval",
]
