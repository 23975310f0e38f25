"""What a classifier scored: :class:`ClassifierResult`, built from a ranking of class scores.

Accuracies are fractions in ``[0, 1]``. "top-5" means top-``min(5, num_classes)``, so with
fewer than five classes it is always 1. Rankings break ties by the lower class index, the same
rule ``argmax`` uses for the prediction, so top-5 is never below top-1 (scikit-learn's
``top_k_accuracy_score`` breaks ties towards the higher index: with all scores tied it misses a
class-0 sample that ``argmax`` gets right). The confusion matrix and per-class recall are
scikit-learn's. The linear probe, kNN and the paper's protocol all score through
:func:`_result`, so they count alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, recall_score
from torch import Tensor


@dataclass
class ClassifierResult:
    """What a classifier scored on the test split.

    ``per_class`` is the recall of each class (``nan`` for a class absent from the test split),
    keyed by class name. ``confusion`` counts test samples with rows = true class and
    columns = predicted class. ``chosen`` holds the hyper-parameters the method used (for the
    linear probe: the selected weight decay and the validation accuracy of every candidate).
    ``scores`` holds the per-class scores the ranking came from (probabilities for the probe,
    summed vote weights for kNN).
    """

    top1: float
    top5: float
    per_class: dict[str, float]
    confusion: np.ndarray
    chosen: dict = field(default_factory=dict)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray | None = None


def _result(
    scores: Tensor, labels: Tensor, class_names: list[str], chosen: dict
) -> ClassifierResult:
    """Score a ``(N, C)`` ranking against true labels."""
    num_classes = scores.shape[1]
    predictions = scores.argmax(dim=1)  # first maximum: ties go to the lower class index
    true_score = scores.gather(1, labels[:, None])
    class_index = torch.arange(num_classes, device=scores.device)
    ranked_ahead = (scores > true_score).sum(1) + (
        (scores == true_score) & (class_index[None, :] < labels[:, None])
    ).sum(1)
    top1 = float((predictions == labels).float().mean())
    top5 = float((ranked_ahead < min(5, num_classes)).float().mean())

    y_true, y_pred, classes = labels.cpu().numpy(), predictions.cpu().numpy(), np.arange(num_classes)
    confusion = confusion_matrix(y_true, y_pred, labels=classes)
    recall = recall_score(y_true, y_pred, labels=classes, average=None, zero_division=np.nan)
    per_class = {name: float(value) for name, value in zip(class_names, recall, strict=True)}
    return ClassifierResult(
        top1=top1,
        top5=top5,
        per_class=per_class,
        confusion=confusion,
        chosen=chosen,
        predictions=y_pred.astype(np.int64),
        scores=scores.float().cpu().numpy(),
    )


def accuracy_report(result: ClassifierResult) -> dict:
    """A plain JSON-able dict: top1, top5, per_class (``None`` where undefined), chosen."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        value = value.item() if isinstance(value, np.generic) else value  # numpy scalars as Python's
        return None if isinstance(value, float) and math.isnan(value) else value

    return {
        "top1": float(result.top1),
        "top5": float(result.top5),
        "per_class": plain(result.per_class),
        "chosen": plain(result.chosen),
    }
