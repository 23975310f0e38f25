"""Pretrain: fit AAVAE (or a VAE/AE baseline) on the ingested images, tracked in MLflow."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from aavae.data.imageset import ImageSet
from aavae.training import train


def pretrain(
    images_train: ImageSet,
    images_unlabeled: ImageSet,
    val_views: dict[str, np.ndarray],
    view_policy: dict[str, Any],
    dataset_card: dict[str, Any],
    model: dict[str, Any],
    pretrain: dict[str, Any],
    artifact_root: str,
) -> tuple[dict[str, Any], Figure]:
    """The model bundle and a reconstruction grid of one pretraining run, which
    :func:`aavae.training.train` owns (resume, checkpoints, the MLflow run's tags)."""
    return train(images_train, images_unlabeled, val_views, view_policy, dataset_card, model, pretrain,
                 artifact_root)
