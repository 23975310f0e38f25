"""The few-label linear probe: what a representation is worth when labels are scarce.

Self-supervised papers report linear evaluation with 1 %, 10 % or a handful of labels per
class beside the full-label figure, because that is where a representation earns its keep:
with every label, a linear classifier on raw pixels is already strong on easy data (digits),
and the full-label figure cannot separate a learned representation from the pixels. With one
label per class it can.

For each count ``k`` in ``labels_per_class`` and each of ``draws`` draws, ``k`` training
images of every class are drawn (the same draws for every feature set scored with the same
``seed``, so rows of one table compare like with like), a multinomial logistic regression is
fitted on them alone and scored on the whole test split. The result is the mean and standard
deviation over draws.

No hyper-parameter is tuned: with one label per class there is nothing to validate on. The
L2 strength is scikit-learn's default (``C = 1``, that is ``weight_decay = 1 / n`` on the
mean loss for ``n`` labelled images). Features are standardised with the mean and standard
deviation of *all* training features: those are unlabelled images, which a few-label setting
has, and ten rows could not estimate them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aavae.common.progress import Progress
from aavae.evaluation.features import ArrayLike, _checked_inputs
from aavae.evaluation.probe import _fit_softmax_regression, _standardizer, _top1

logger = logging.getLogger(__name__)

#: Labels per class of the default table (the digits' training split has ~134 per class).
DEFAULT_LABELS_PER_CLASS: tuple[int, ...] = (1, 5, 10)
#: Draws per count: the spread of one label per class is several points, 20 draws put the
#: standard error of the mean near one point.
DEFAULT_DRAWS = 20


@dataclass(frozen=True)
class FewLabelScore:
    """Test top-1 of the probe over ``draws`` draws of ``labels_per_class`` labels per class."""

    labels_per_class: int
    mean: float
    sd: float
    draws: int


def labelled_draw(labels: np.ndarray, labels_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``labels_per_class`` rows of every class (sorted), drawn without replacement."""
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < labels_per_class:
            raise ValueError(
                f"class {int(label)} has {len(rows)} training images, fewer than "
                f"labels_per_class={labels_per_class}: lower evaluate.few_labels"
            )
        chosen.append(rng.choice(rows, labels_per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def few_label_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int,
    *,
    labels_per_class: Sequence[int] = DEFAULT_LABELS_PER_CLASS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    progress: bool = True,
) -> list[FewLabelScore]:
    """Mean and sd of test top-1 over ``draws`` few-label fits per count (see the module doc).

    A count larger than the smallest class's training images is skipped with a warning (an
    image folder may have a class of three images); the rest are scored.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if any(int(k) < 1 for k in labels_per_class):
        raise ValueError(f"labels_per_class must be positive counts, got {list(labels_per_class)}")
    xtr, ytr, xte, yte, _ = _checked_inputs(train_x, train_y, test_x, test_y, num_classes, None, "cpu")
    labels = ytr.numpy()
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    too_many = sorted({int(k) for k in labels_per_class if int(k) > smallest})
    if too_many:
        logger.warning("few-label probe: the smallest class has %d training images, so %s labels per "
                       "class cannot be drawn; skipped", smallest, too_many)
    counts = [int(k) for k in labels_per_class if int(k) <= smallest]
    scaler = _standardizer(xtr)
    xtr, xte = scaler(xtr), scaler(xte)
    scores = []
    shown = Progress("few-label probe", len(counts) * draws, "fits", enabled=progress)
    with torch.inference_mode(False), torch.enable_grad(), shown:
        xtr, xte, ytr, yte = (t.clone() if t.is_inference() else t for t in (xtr, xte, ytr, yte))
        for k in counts:
            # One generator per count: adding a count leaves the other counts' draws alone.
            rng = np.random.default_rng([seed, k])
            accuracies = []
            for _ in range(draws):
                rows = torch.from_numpy(labelled_draw(labels, k, rng))
                params = _fit_softmax_regression(xtr[rows], ytr[rows], num_classes,
                                                 weight_decay=1.0 / len(rows), max_iter=500)
                accuracies.append(_top1(params, xte, yte))
                shown.advance()
            scores.append(FewLabelScore(k, float(np.mean(accuracies)), float(np.std(accuracies)), draws))
    return scores
