"""Measure learned representations: feature extraction, a linear probe and a kNN classifier.

Everything here is plain PyTorch/NumPy and works on features from any frozen encoder. One
module per concern, all re-exported here so ``from aavae.evaluation import X`` keeps working:

* :mod:`.features` -- :func:`extract_features` runs a frozen encoder over uint8 images in
  batches (and checks every image argument).
* :mod:`.probe` -- :func:`linear_probe` fits a multinomial logistic regression on
  standardised features with full-batch L-BFGS. The L2 strength is chosen on a stratified
  validation part of the *training* split (:func:`stratified_split`), the model is refit on
  the whole training split, and the test split is touched exactly once.
* :mod:`.few_labels` -- :func:`few_label_probe` fits the probe on 1, 5, 10 labels per class,
  many draws each, and reports mean and sd: where a representation earns its keep.
* :mod:`.knn` -- :func:`knn_classify` is the weighted cosine kNN of InstDisc/DINO/solo-learn;
  :func:`nearest_neighbours` finds the most cosine-similar rows.
* :mod:`.paper_protocol` -- :func:`paper_linear_eval` is the paper's protocol instead: a
  linear layer trained by SGD on a frozen encoder over augmented images.
* :mod:`.scoring` -- :class:`ClassifierResult` and :func:`accuracy_report`, which turns one
  into a JSON-able dict.
* :mod:`.bundles` -- :func:`bundle_from_checkpoint` turns a checkpoint file (this project's
  model bundle or the paper's Lightning checkpoint) into a model bundle;
  :func:`model_from_bundle` rebuilds its network; :func:`baseline_encoder` gives the
  baselines' encoders.
* :mod:`.embedding` -- :func:`embed_2d` maps features to 2-D (PCA + t-SNE).
* :mod:`.inputs` -- the checks of feature matrices, labels and class lists.

Accuracies are fractions in ``[0, 1]``. "top-5" means top-``min(5, num_classes)``, so with
fewer than five classes it is always 1. Rankings break ties by the lower class index, the same
rule ``argmax`` uses for the prediction, so top-5 is never below top-1.
"""

from aavae.evaluation.bundles import (
    BUNDLE_KEYS,
    baseline_encoder,
    bundle_from_checkpoint,
    bundle_preprocessing,
    make_bundle,
    model_from_bundle,
)
from aavae.evaluation.embedding import EMBEDDING_METHODS, embed_2d
from aavae.evaluation.features import ArrayLike, extract_features
from aavae.evaluation.few_labels import DEFAULT_LABELS_PER_CLASS, FewLabelScore, few_label_probe
from aavae.evaluation.knn import knn_classify, nearest_neighbours
from aavae.evaluation.paper_protocol import (
    PAPER_AUGMENTATIONS,
    PAPER_CROP_MAX_SIZE,
    PAPER_CROP_PADDING,
    padded_random_crop,
    paper_augmentation_for,
    paper_linear_eval,
    paper_train_views,
    random_resized_crop,
)
from aavae.evaluation.probe import DEFAULT_WEIGHT_DECAYS, linear_probe, stratified_split
from aavae.evaluation.scoring import TOP_K, ClassifierResult, accuracy_report

__all__ = [
    "BUNDLE_KEYS",
    "DEFAULT_LABELS_PER_CLASS",
    "DEFAULT_WEIGHT_DECAYS",
    "EMBEDDING_METHODS",
    "PAPER_AUGMENTATIONS",
    "PAPER_CROP_MAX_SIZE",
    "PAPER_CROP_PADDING",
    "TOP_K",
    "ArrayLike",
    "ClassifierResult",
    "FewLabelScore",
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
    "padded_random_crop",
    "paper_augmentation_for",
    "paper_linear_eval",
    "paper_train_views",
    "random_resized_crop",
    "stratified_split",
]
