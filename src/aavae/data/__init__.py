"""Dataset readers, each giving its splits as image sets (imageset.py). ``read_dataset`` reads
what a validated ``DatasetConfig`` names; the readers take plain arguments (notebooks)."""

from __future__ import annotations

from typing import Any

from aavae.data import cifar10, stl10
from aavae.data.card import ReadResult
from aavae.data.errors import DatasetError
from aavae.data.imageset import UNLABELED, ImageSet, load_imageset, save_imageset
from aavae.data.splits import (
    TEST_SPLIT_NAMES,
    evaluation_split_name,
    hold_out_validation,
    validation_split_name,
)

__all__ = [
    "UNLABELED",
    "DatasetError",
    "ImageSet",
    "ReadResult",
    "load_imageset",
    "read_dataset",
    "save_imageset",
    "validation_split",
]


DIGITS_SIDE = 16  # digits with dataset.image_size null


def image_side(config: Any) -> int | None:
    """The side of the images :func:`read_dataset` gives (None: an image folder's own size)."""
    official = {"cifar10": cifar10.IMAGE_SIDE, "stl10": stl10.IMAGE_SIDE}.get(config.name)
    return official or config.image_size or (DIGITS_SIDE if config.name == "digits" else None)


def read_dataset(config: Any) -> ReadResult:
    """Read the dataset a validated ``DatasetConfig`` names, its validation images held out."""
    return hold_out_validation(_read(config), config.val_holdout)


def _read(config: Any) -> ReadResult:
    if config.name == "digits":
        from aavae.data.digits import SOURCE, read_digits

        splits = read_digits(config.image_size or DIGITS_SIDE, config.test_fraction, config.seed)
        return ReadResult(splits, SOURCE, "sklearn-digits")
    if config.path is None and not config.download:
        raise DatasetError(
            f"dataset.path is not set for dataset.name={config.name}: give the file or folder "
            "with --params dataset.path=<path> (or dataset.download=true for cifar10/stl10)."
        )
    path = config.path or "data/01_raw"
    if config.name == "cifar10":
        return cifar10.read_cifar10(path, download=config.download)
    if config.name == "stl10":
        splits = ("train", "test", "unlabeled") if config.unlabeled else ("train", "test")
        return stl10.read_stl10(path, splits=splits, download=config.download)
    from aavae.data.imagefolder import read_imagefolder

    return read_imagefolder(
        path, image_size=config.image_size, resize=config.resize, on_bad_image=config.on_bad_image
    )


def pipeline_splits(result: ReadResult) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The train, test and unlabeled sets the pipelines use (unlabeled may be empty)."""
    splits = result.splits
    if "train" not in splits:
        raise DatasetError(
            f"'{result.source}' holds no 'train' split (found: {', '.join(splits)}): add a "
            "train/ folder of class folders."
        )
    test_name = evaluation_split_name(splits)
    if test_name is None:
        raise DatasetError(
            f"'{result.source}' holds no test split: expected one of {', '.join(TEST_SPLIT_NAMES)} "
            f"beside 'train' (found: {', '.join(splits)}). Evaluation needs held-out images: "
            "add a test/ (or val/) folder with the same class folders as train/."
        )
    train = splits["train"]
    unlabeled = splits.get("unlabeled") or ImageSet.empty("unlabeled", train.image_shape, train.class_names)
    return train, splits[test_name], unlabeled


def validation_split(result: ReadResult) -> ImageSet:
    """The images that validate pretraining (splits.py): never the test split; empty when the
    dataset has none (``dataset.val_holdout=0`` and no ``val/`` beside ``test/``)."""
    name = validation_split_name(result.splits)
    if name is not None:
        return result.splits[name]
    train = result.splits["train"]
    return ImageSet.empty("val", train.image_shape, train.class_names)
