"""Measure learned representations: feature extraction, a linear probe and a kNN classifier.

Everything here is plain PyTorch/NumPy and works on features from any frozen encoder. One
module per concern; what the pipelines, the MLflow model, the benchmarks and a notebook call
is re-exported here (``from aavae.evaluation import linear_probe``):

* :mod:`.features` -- a frozen encoder over uint8 images, in batches.
* :mod:`.probe` -- the L-BFGS linear probe, tuned without the test split.
* :mod:`.few_labels` -- the probe on 1, 5, 10 labels per class: where a representation earns its keep.
* :mod:`.knn` -- the weighted cosine kNN of InstDisc/DINO/solo-learn; nearest neighbours.
* :mod:`.paper_protocol` -- the paper's protocol instead: SGD on a frozen encoder over augmented images.
* :mod:`.scoring` -- what a classifier scored, and how accuracies are counted.
* :mod:`.bundles` -- model bundles from checkpoint files; the baselines' encoders.
* :mod:`.embedding` -- a 2-D map of features (PCA + t-SNE).
* :mod:`.inputs` -- the checks of feature matrices, labels and class lists.
* :mod:`.transfer` -- which images an evaluation scores.
"""

from aavae.evaluation.bundles import (
    baseline_encoder,
    bundle_from_checkpoint,
    bundle_preprocessing,
    make_bundle,
    model_from_bundle,
)
from aavae.evaluation.embedding import embed_2d
from aavae.evaluation.features import extract_features
from aavae.evaluation.few_labels import few_label_probe
from aavae.evaluation.knn import knn_classify, nearest_neighbours
from aavae.evaluation.paper_protocol import paper_linear_eval
from aavae.evaluation.probe import linear_probe
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
