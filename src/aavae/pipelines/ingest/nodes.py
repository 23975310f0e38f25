"""Ingest: read the configured dataset once into the catalog's uniform image sets."""

from __future__ import annotations

import logging
from typing import Any

from aavae.config import DatasetConfig, parse
from aavae.data import read_dataset
from aavae.data.imageset import ImageSet

log = logging.getLogger(__name__)


def ingest(dataset: dict[str, Any]) -> tuple[ImageSet, ImageSet, ImageSet, dict[str, Any]]:
    """Read the dataset named by ``params:dataset``; return train, test, unlabeled, card."""
    config = parse("dataset", dataset, DatasetConfig)
    result = read_dataset(config)
    card = result.card()
    log.info(
        "Ingested %s: %s", config.name,
        ", ".join(f"{split} {info['count']}" for split, info in card["splits"].items()),
    )
    return result.train, result.test, result.unlabeled, card
