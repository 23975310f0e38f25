"""Images held out of training the way the paper's data modules hold them out, image for image.

The paper's CIFAR-10 module validates on 5,000 of the 50,000 training images, its STL-10 one
on 5,000 of the 100,000 unlabeled and 500 of the 5,000 labelled ones, each by
``random_split(..., generator=torch.Generator().manual_seed(42))``: a CPU ``randperm`` from
seed 42, the same permutation since torch 1.8, so :func:`paper_random_split` holds out the very
images its runs did. ``dataset.val_holdout`` holds a training split's images out at ingest
(:func:`hold_out_validation`; at most a tenth), unless the dataset has a validation split of
its own; ``pretrain.unlabeled_holdout`` the unlabeled split's (:mod:`aavae.training.data`).

Roles by split name: the test split is ``test``, else a ``val``-like one; the validation split
is another ``val``-like split, or the images held out. The test split never validates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from aavae.data.card import ReadResult
from aavae.data.imageset import ImageSet

log = logging.getLogger(__name__)

PAPER_SPLIT_SEED = 42  # the seed of the paper's CIFAR10DataModule and STL10DataModule
VAL_SPLIT = "val"  # the held-out images' split in the dataset card ...
TRAIN_HOLDOUT_SPLIT = "train_holdout"  # ... where there is no test/ (a new val would be the test split)
TEST_SPLIT_NAMES = ("test", "val", "valid", "validation")
VALIDATION_SPLIT_NAMES = ("val", "valid", "validation", TRAIN_HOLDOUT_SPLIT)
MAX_HOLDOUT_SHARE = 10  # images held out of training: at most one in ten (the paper's share)


def evaluation_split_name(splits: Mapping[str, object]) -> str | None:
    """The split evaluation scores: ``test``, else the first ``val``-like split."""
    return next((name for name in TEST_SPLIT_NAMES if name in splits), None)


def validation_split_name(splits: Mapping[str, object]) -> str | None:
    """The split that validates pretraining: a ``val``-like split that is not the test split."""
    test = evaluation_split_name(splits)
    return next((name for name in VALIDATION_SPLIT_NAMES if name in splits and name != test), None)


def paper_random_split(count: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept and held out of ``count`` images, as the paper's ``random_split`` draws
    them; sorted, so reads of a memory map stay in file order (training shuffles anyway)."""
    if not 0 <= held_out < count:
        raise ValueError(f"cannot hold out {held_out} of {count} images: hold out fewer than there are")
    import torch  # imported here: reading a dataset does not otherwise need torch

    order = torch.randperm(count, generator=torch.Generator().manual_seed(PAPER_SPLIT_SEED)).numpy()
    return np.sort(order[: count - held_out]), np.sort(order[count - held_out:])


def hold_out_validation(result: ReadResult, count: int) -> ReadResult:
    """``result`` with ``count`` (at most a tenth) of its ``train`` images moved to a validation
    split, as the paper holds them out; unchanged if the result has a validation split."""
    if validation_split_name(result.splits) or not count:
        return result
    train = result.splits["train"]
    allowed = len(train) // MAX_HOLDOUT_SHARE
    if count > allowed:
        log.warning("dataset.val_holdout=%d is more than a tenth of the %d training images of %s: "
                    "holding out %d", count, len(train), result.source, allowed)
    if not (count := min(count, allowed)):
        return result
    kept, held_out = paper_random_split(len(train), count)
    name = VAL_SPLIT if "test" in result.splits else TRAIN_HOLDOUT_SPLIT
    splits: dict[str, ImageSet] = {}
    for split, imageset in result.splits.items():
        if split == "train":
            splits["train"] = _rows(train, kept, "train")
            splits[name] = _rows(train, held_out, name)
        else:
            splits[split] = imageset
    return ReadResult(splits, result.source, result.format, result.archive_sha256, list(result.skipped))


def _rows(imageset: ImageSet, rows: np.ndarray, split: str) -> ImageSet:
    return ImageSet(np.ascontiguousarray(imageset.images[rows]), imageset.labels[rows],
                    imageset.class_names, split)
