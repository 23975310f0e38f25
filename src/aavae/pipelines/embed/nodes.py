"""Embed: every image of ``embed.path`` (a folder or archive) as a row of
``embeddings.parquet``, with the trained ``aavae_model`` or ``embed.model_uri``, a cosine index,
and the nearest neighbours of ``embed.query`` (or of a few of its images) with a grid PNG;
``--pipeline embed_query`` answers another query from the stored index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aavae.common.hardware import choose_precision
from aavae.config import DatasetConfig, EmbedConfig, parse
from aavae.reporting.plots import neighbour_grid_figure
from aavae.serving.embeddings import (
    Encoder,
    NeighbourIndex,
    answer_query,
    check_query,
    embed_folder,
    read_indexed_images,
)
from aavae.serving.inference import ImageEncoder

log = logging.getLogger(__name__)

SAMPLE_QUERIES = 4  # rows of the grid when no embed.query is given
PATH, EMBEDDING = "path", "embedding"


def load_encoder(
    aavae_model: dict[str, Any] | None, embed: dict[str, Any], dataset: dict[str, Any], artifact_root: str
) -> Encoder:
    """The model to embed with: ``embed.model_uri`` if set (it computes in fp32, as it does when
    served), else the trained ``aavae_model`` (under the environment's ``artifact_root``) at
    ``embed.precision``."""
    config = parse("embed", embed, EmbedConfig)
    if config.model_uri:
        from aavae.serving.mlflow_model import RegisteredEncoder  # MLflow glue, only when asked for

        return RegisteredEncoder(config.model_uri)
    if aavae_model is None:
        raise ValueError(
            f"No model to embed with: {artifact_root}/06_models/aavae_model.pt does not exist. Run "
            "`kedro run --pipeline pretrain` first, or pass --params embed.model_uri=models:/<name>/<version>."
        )
    # how its training images were brought to size, as the bundle records it (older bundles: the
    # environment's dataset.resize)
    resize = (aavae_model.get("data") or {}).get("resize") or parse("dataset", dataset, DatasetConfig).resize
    return ImageEncoder.from_bundle(aavae_model, resize, choose_precision(config.precision))


def embed_images(encoder: Encoder, embed: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Embed every image of ``embed.path``: the Parquet table and the neighbour index."""
    config = parse("embed", embed, EmbedConfig)
    if not config.path:
        raise ValueError(
            "embed.path is not set: give the folder or archive (.tar, .tar.gz, .zip) of images "
            "to embed, e.g. kedro run --pipeline embed --params embed.path=data/01_raw/photos"
        )
    check_query(config.query, config.path)  # a wrong query is said now, not after the embedding
    result = embed_folder(encoder, config.path, batch_size=config.batch_size,
                          on_bad_image=config.on_bad_image)
    log.info("Embedded %d images of %s in %.1f s (%.0f images/s) with %s (%s)", len(result.paths),
             config.path, result.seconds, len(result.paths) / max(result.seconds, 1e-9), encoder.identity,
             getattr(encoder, "precision", "32-true"))
    table = pd.DataFrame({PATH: result.paths, EMBEDDING: list(result.vectors)})
    index = NeighbourIndex.build(result.paths, result.vectors, str(config.path), encoder.identity)
    return table, index.to_arrays()


def query_neighbours(
    encoder: Encoder, embedding_index: dict[str, np.ndarray], embed: dict[str, Any]
) -> tuple[dict[str, Any], Figure]:
    """The nearest neighbours of ``embed.query`` (an image file, or a path of the table), or,
    without one, of a few evenly spaced images of the folder: as JSON, and as a grid."""
    config = parse("embed", embed, EmbedConfig)
    index = NeighbourIndex.from_arrays(embedding_index)
    answers = answer_query(index, encoder, config.query, config.neighbours, SAMPLE_QUERIES)
    for answer in answers:
        log.info("Nearest to %s: %s", answer.query,
                 "; ".join(f"{n.path} ({n.similarity:.3f})" for n in answer.neighbours))

    wanted = {n.path for a in answers for n in a.neighbours} | {a.query for a in answers if a.image is None}
    pictures = read_indexed_images(index, wanted, encoder.preprocessing)
    figure = neighbour_grid_figure(
        np.stack([pictures[a.query] if a.image is None else a.image for a in answers]),
        [[pictures[n.path] for n in a.neighbours] for a in answers],
        [Path(a.query).name for a in answers],
        [[f"{n.similarity:.2f}" for n in a.neighbours] for a in answers],
        title=f"Nearest neighbours by cosine similarity in {index.source}",
    )
    report = {
        "source": index.source, "model": index.model,
        "queries": [{"query": a.query, "neighbours": [{"path": n.path, "similarity": n.similarity}
                                                      for n in a.neighbours]} for a in answers],
    }
    return report, figure
