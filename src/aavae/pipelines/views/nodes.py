"""Views: resolve the augmentation policy, preview it, fix a seeded set of validation views."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from aavae.common import provenance
from aavae.config import PretrainConfig, ViewsConfig, parse
from aavae.data import DatasetError
from aavae.data.imageset import ImageSet
from aavae.reporting.plots import image_grid
from aavae.training.data import validation_images
from aavae.views import ViewPolicy, make_views, resolve_preprocessing, split_view_policy
from aavae.views.policy import POLICY_FILE


def _policy(view_policy: dict[str, Any], images: ImageSet, root: str) -> ViewPolicy:
    """The augmentation policy, once it is shown to be resolved from these images' ingest."""
    provenance.check_data(f"{root}/{POLICY_FILE}", view_policy.get(provenance.DATA_SHA256), images.fingerprint,
                          "Run `kedro run --pipeline views` (or `--pipeline prepare`) to resolve it again.")
    return split_view_policy(view_policy, f"{root}/{POLICY_FILE}")[0]


def _views_uint8(images: np.ndarray, policy: ViewPolicy, seed: int) -> np.ndarray:
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    views = make_views(batch, policy, torch.Generator().manual_seed(seed))
    return (views.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resolve_view_policy(views: dict[str, Any], images_train: ImageSet) -> dict[str, Any]:
    """The policy actually used, plus how originals become network inputs: the per-channel
    mean/std (the recipe's constants, or computed from the training images) and the optional
    centre zoom of originals."""
    config = parse("views", views, ViewsConfig)
    policy = ViewPolicy(**config.policy_fields())
    preprocessing = resolve_preprocessing(config.mean, config.std, config.original_resize, images_train.images)
    return {**policy.to_dict(), **preprocessing.to_dict(), provenance.DATA_SHA256: images_train.fingerprint}


def preview_views(images_train: ImageSet, view_policy: dict[str, Any], views: dict[str, Any],
                  artifact_root: str) -> Figure:
    """A grid: each training image beside several of its views."""
    config = parse("views", views, ViewsConfig)
    policy = _policy(view_policy, images_train, artifact_root)
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(images_train), size=min(config.preview_count, len(images_train)), replace=False))
    originals = np.asarray(images_train.images[chosen])
    columns = [originals] + [
        _views_uint8(originals, policy, config.seed + 1 + k) for k in range(config.preview_views)
    ]
    titles = ["original"] + [f"view {k + 1}" for k in range(config.preview_views)]
    return image_grid(columns, titles, title="Training views (AAVAE input) beside the original")


def make_validation_views(images_val: ImageSet, images_unlabeled: ImageSet, view_policy: dict[str, Any],
                          views: dict[str, Any], pretrain: dict[str, Any], artifact_root: str) -> dict[str, np.ndarray]:
    """A fixed, seeded set of views of the images that validate pretraining (only monitored), so
    val loss compares across runs: the validation split or the unlabeled images pretraining holds
    out (:func:`aavae.training.data.validation_images`), never the test split; the provenance
    records which (``validation_split``) and how many images it holds."""
    config = parse("views", views, ViewsConfig)
    training = parse("pretrain", pretrain, PretrainConfig)
    images = validation_images(images_val, images_unlabeled, training.training_split, training.unlabeled_holdout)
    if not len(images):
        raise DatasetError(
            "No images to validate pretraining on: the dataset has no validation split and "
            "dataset.val_holdout=0 held none out of training. Set dataset.val_holdout to a count "
            "(e.g. 128) or give the image folder a val/ beside its test/; the test split is "
            "evaluation's alone."
        )
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(images), size=min(config.val_count, len(images)), replace=False))
    originals = np.ascontiguousarray(images.images[chosen])
    arrays = {
        "views": _views_uint8(originals, _policy(view_policy, images, artifact_root), config.seed),
        "originals": originals,
        "labels": np.asarray(images.labels[chosen]),
    }
    return provenance.stamp(arrays, **{provenance.DATA_SHA256: images.fingerprint,
                                       "validation_split": images.split, "validation_images": len(images)})
