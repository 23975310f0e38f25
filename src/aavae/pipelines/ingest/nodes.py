"""Ingest: read the configured dataset once into the catalog's uniform image sets."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from aavae.config import DatasetConfig, parse
from aavae.data import image_side, pipeline_splits, read_dataset, validation_split
from aavae.data.imageset import ImageSet

log = logging.getLogger(__name__)


def ingest(dataset: dict[str, Any]) -> tuple[ImageSet, ImageSet, ImageSet, ImageSet, dict[str, Any]]:
    """Read the dataset named by ``params:dataset``; return train, test, unlabeled, validation
    images and the card."""
    config = parse("dataset", dataset, DatasetConfig)
    config.require_path()
    side = image_side(config)
    if config.image_size is not None and config.image_size != side:
        # conf/base's 16 reaches a `--params dataset.name=cifar10` run: say that it is not used
        log.warning("dataset.image_size=%d is not used for %s: its images are %d px and are read "
                    "as they are (the paper's recipes: --env %s; set dataset.image_size to null to "
                    "silence this)", config.image_size, config.name, side, config.name)
    result = read_dataset(config)
    # every split carries the ingest's data fingerprint, so what is made from it can say so
    train, test, unlabeled, val = (replace(split, fingerprint=result.sha256)
                                   for split in (*pipeline_splits(result), validation_split(result)))
    card = {
        "name": config.name,
        "class_names": list(train.class_names),
        "image_shape": list(train.image_shape),
        "resize": config.resize,  # how images of another size are brought to image_shape
        **result.describe(),
    }
    log.info("Ingested %s from %s: %s", config.name, result.source,
             ", ".join(f"{name} {info['count']}" for name, info in card["splits"].items()))
    if result.skipped:
        log.warning("Skipped %d undecodable files (listed in dataset_card.json)", len(result.skipped))
    if len(train.class_names) < 2:  # said now, not after pretraining
        log.warning("%s from %s has %d class (%s): pretraining and the embed pipeline work, but the "
                    "evaluate pipeline needs two classes or more and will refuse it.", config.name,
                    result.source, len(train.class_names), ", ".join(train.class_names))
    return train, test, unlabeled, val, card
