"""Images held out of training the way the paper's data modules hold them out, image for image.

The paper's CIFAR-10 module keeps 45,000 of the 50,000 training images and validates on the
other 5,000; its STL-10 module keeps 95,000 of the 100,000 unlabeled images and 4,500 of the
5,000 labelled training images (its linear evaluation trains on those 4,500). Each split is
``torch.utils.data.random_split(dataset, [kept, held_out],
generator=torch.Generator().manual_seed(42))``: a ``torch.randperm`` of the whole split drawn
from seed 42, the first ``kept`` positions kept and the rest held out. CPU ``randperm`` has
drawn the same permutation for a given seed since torch 1.8 (its algorithm is kept for sizes
below 2^32 / 20), so :func:`paper_random_split` holds out the very images the paper's runs did.

``dataset.val_holdout`` applies this to a dataset's labelled training split when it is read
(:func:`hold_out_validation`): the rest of the project then sees the paper's training images
everywhere (pretraining, the online probe, both linear evaluations, kNN), and the held-out
images become a ``val`` split of the dataset card. ``pretrain.unlabeled_holdout`` applies it to
the unlabeled split, which only pretraining reads (:func:`aavae.training.data.training_images`).
"""

from __future__ import annotations

import numpy as np

from aavae.data.card import ReadResult
from aavae.data.errors import DatasetError
from aavae.data.imageset import ImageSet

PAPER_SPLIT_SEED = 42  # the seed of the paper's CIFAR10DataModule and STL10DataModule
VAL_SPLIT = "val"  # the held-out images' split in the dataset card


def paper_random_split(count: int, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept and held out of ``count`` images, as the paper's ``random_split`` draws
    them (see the module docstring); each sorted ascending, which keeps reads of a memory map
    in file order (training shuffles anyway)."""
    if not 0 <= held_out < count:
        raise ValueError(f"cannot hold out {held_out} of {count} images: hold out fewer than there are")
    import torch  # imported here: reading a dataset does not otherwise need torch

    order = torch.randperm(count, generator=torch.Generator().manual_seed(PAPER_SPLIT_SEED)).numpy()
    return np.sort(order[: count - held_out]), np.sort(order[count - held_out:])


def hold_out_validation(result: ReadResult, count: int) -> ReadResult:
    """``result`` with ``count`` of its ``train`` images moved to a ``val`` split, as the
    paper's data modules hold them out (:func:`paper_random_split`). ``count`` 0: unchanged."""
    if not count:
        return result
    train = result.splits["train"]
    if count >= len(train):
        raise DatasetError(
            f"dataset.val_holdout={count} leaves none of the {len(train):,} training images of "
            f"{result.source} to train on; hold out fewer (the paper's CIFAR-10: 5000, STL-10: 500)"
        )
    kept, held_out = paper_random_split(len(train), count)
    splits: dict[str, ImageSet] = {}
    for name, imageset in result.splits.items():
        if name == "train":
            splits["train"] = _rows(train, kept, "train")
            splits[VAL_SPLIT] = _rows(train, held_out, VAL_SPLIT)
        else:
            splits[name] = imageset
    return ReadResult(splits, result.source, result.format, result.archive_sha256, list(result.skipped))


def _rows(imageset: ImageSet, rows: np.ndarray, split: str) -> ImageSet:
    return ImageSet(np.ascontiguousarray(imageset.images[rows]), imageset.labels[rows],
                    imageset.class_names, split)
