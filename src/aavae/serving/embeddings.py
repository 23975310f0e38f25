"""Embeddings of a whole folder, read and encoded batch by batch (memory stays at one batch
however large the folder is), and an exact cosine nearest-neighbour index over them.

:class:`NeighbourIndex` holds the embeddings centred on their mean and L2-normalised: a query is
one matrix product with them, exact, in milliseconds at 10,000 x 512 float32 on a CPU, so an
approximate index would buy nothing at the sizes this project embeds. Centring makes the scores
say something: a trained encoder's features share a large common part (they are rectified), so
their plain cosine puts every neighbour at 0.98-0.99; centred, a near twin still scores near 1
and an unrelated image near 0, with about the same neighbours (digits test split, eight-neighbour
label precision 0.45 either way). It is stored as plain arrays (no pickle) and remembers which
model made it, so a query embedded by another model is refused instead of silently compared.

Plain NumPy/PyTorch: no Kedro, no MLflow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from aavae.common.progress import Progress
from aavae.data.folder_images import is_image_path, iter_image_batches, list_images, read_image
from aavae.evaluation import nearest_neighbours
from aavae.serving.inference import ServingPreprocessing

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the embed pipeline needs of a model: its preprocessing and a batch encoder."""

    preprocessing: ServingPreprocessing
    identity: str  # which model this is, recorded in the index (a model URI, a run id)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``N x S x S x 3`` at the preprocessing's size -> float32 ``(N, D)``."""


@dataclass
class FolderEmbeddings:
    """The embedded images of one source, in storage order, and what could not be read."""

    source: str
    paths: list[str]
    vectors: np.ndarray  # float32 (N, D)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def embed_folder(
    encoder: Encoder,
    path: str | os.PathLike,
    *,
    batch_size: int = 256,
    on_bad_image: str = "error",
    progress: bool = True,
) -> FolderEmbeddings:
    """Embed every image of a folder or archive (any layout) with ``encoder``."""
    start = time.perf_counter()
    listing = list_images(path)
    if listing.not_images:
        logger.info("Skipping %d files of %s that are not images (e.g. %s)",
                    len(listing.not_images), path, listing.not_images[0])
    prep = encoder.preprocessing
    skipped: list[str] = []
    paths: list[str] = []
    chunks: list[np.ndarray] = []
    with Progress("embed", len(listing.paths), "images", enabled=progress) as shown:
        for batch in iter_image_batches(path, prep.image_size, prep.resize,  # type: ignore[arg-type]
                                        batch_size=batch_size, on_bad_image=on_bad_image,
                                        skipped=skipped):
            if len(batch.paths):
                chunks.append(np.asarray(encoder.encode(batch.images), np.float32))
                paths.extend(batch.paths)
            shown.advance(len(paths) + len(skipped) - shown.done)  # skipped files count as done
    if not paths:
        raise ValueError(f"No image of '{path}' could be decoded ({len(skipped)} skipped).")
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        logger.warning("Skipped %d undecodable images of %s: %s", len(skipped), path, shown)
    return FolderEmbeddings(str(path), paths, np.concatenate(chunks), skipped,
                            time.perf_counter() - start)


@dataclass(frozen=True)
class Neighbour:
    path: str
    similarity: float


@dataclass
class NeighbourIndex:
    """Exact cosine search over the centred embeddings of one source, made by one model."""

    paths: list[str]
    unit_vectors: np.ndarray  # float32 (N, D): the embeddings less ``centre``, rows of norm 1
    source: str
    model: str
    centre: np.ndarray  # float32 (D,): the embeddings' mean (zeros in an index stored before centring)

    @classmethod
    def build(cls, paths: Sequence[str], vectors: np.ndarray, source: str, model: str) -> NeighbourIndex:
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(vectors) != len(paths) or not len(paths):
            raise ValueError(
                f"need one embedding row per path, got {len(paths)} paths and vectors of "
                f"shape {vectors.shape}"
            )
        centre = vectors.mean(axis=0)
        centred = vectors - centre
        unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        return cls(list(paths), unit, source, model, centre)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` (strings as unicode arrays: loads without pickle)."""
        return {"paths": np.asarray(self.paths, dtype=str), "unit_vectors": self.unit_vectors,
                "source": np.asarray(self.source), "model": np.asarray(self.model), "centre": self.centre}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NeighbourIndex:
        missing = {"paths", "unit_vectors", "source", "model"} - set(arrays)
        if missing:
            raise ValueError(f"not a neighbour index: missing {', '.join(sorted(missing))}")
        unit_vectors = np.asarray(arrays["unit_vectors"], np.float32)
        centre = np.asarray(arrays.get("centre", np.zeros(unit_vectors.shape[1])), np.float32)
        return cls([str(p) for p in arrays["paths"]], unit_vectors, str(arrays["source"]),
                   str(arrays["model"]), centre)

    def query(self, vectors: np.ndarray, k: int, exclude_rows: Sequence[int | None] | None = None
              ) -> list[list[Neighbour]]:
        """The ``k`` most cosine-similar paths of each query row, most similar first, without
        ``exclude_rows[i]`` (a query taken from the index is its own nearest neighbour)."""
        vectors = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        if vectors.shape[1] != self.unit_vectors.shape[1]:
            raise ValueError(
                f"the query has {vectors.shape[1]} dimensions, the index {self.unit_vectors.shape[1]}: "
                f"they come from different models (the index was made by {self.model})"
            )
        rows, similarities = nearest_neighbours(self.unit_vectors, vectors - self.centre, k=k + 1)
        excluded = list(exclude_rows) if exclude_rows is not None else [None] * len(vectors)
        answers = []
        for found, sims, skip in zip(rows, similarities, excluded, strict=True):
            kept = [(int(r), float(s)) for r, s in zip(found, sims, strict=True) if r != skip][:k]
            answers.append([Neighbour(self.paths[r], s) for r, s in kept])
        return answers


@dataclass
class QueryAnswer:
    """One query's nearest images; ``image`` is the query's pixels when it is not in the index."""

    query: str
    neighbours: list[Neighbour]
    image: np.ndarray | None = None


def answer_query(
    index: NeighbourIndex, encoder: Encoder, query: str | None, k: int, samples: int = 4
) -> list[QueryAnswer]:
    """The ``k`` nearest images of ``query``: an image file (embedded by ``encoder``) or a path
    of the index; with no query, of ``samples`` evenly spaced images of the index itself. An
    image of the index is never its own neighbour; a file from outside may find its twin."""
    if index.model != encoder.identity:
        raise ValueError(
            f"The stored index was made by {index.model}, but queries would be embedded by "
            f"{encoder.identity}. Run `kedro run --pipeline embed` again with this model."
        )
    if query is None:
        rows = np.unique(np.linspace(0, len(index.paths) - 1, samples).round().astype(int)).tolist()
    elif Path(query).is_file():
        prep = encoder.preprocessing
        image = read_image(query, prep.image_size, prep.resize)  # type: ignore[arg-type]
        (found,) = index.query(encoder.encode(image[None]), k)
        return [QueryAnswer(query, found, image)]
    elif query in index.paths:
        rows = [index.paths.index(query)]
    else:
        raise ValueError(_not_a_query(query, index.paths[0]))
    # A row's direction, uncentred for query() to centre again.
    found = index.query(index.unit_vectors[rows] + index.centre, k, exclude_rows=rows)
    return [QueryAnswer(index.paths[row], neighbours) for row, neighbours in zip(rows, found, strict=True)]


def check_query(query: str | None, path: str | os.PathLike) -> None:
    """Refuse an ``embed.query`` that is neither an image file nor an image of ``path``, before
    the folder is embedded (listing it costs a fraction of embedding it)."""
    if query is None or Path(query).is_file():
        return
    paths = list_images(path).paths
    if query not in paths:
        raise ValueError(_not_a_query(query, paths[0] if paths else "(no images)"))


def _not_a_query(query: str, example: str) -> str:
    return (f"embed.query={query!r} is neither an image file nor a path of the embedded table "
            f"(paths look like {example!r}). Give an existing image file, or a path inside embed.path.")


def read_indexed_images(index: NeighbourIndex, paths: set[str], prep: ServingPreprocessing) -> dict[str, np.ndarray]:
    """The images at ``paths`` of the index's source, read again at the model's input size."""
    found: dict[str, np.ndarray] = {}
    for batch in iter_image_batches(index.source, prep.image_size, prep.resize,  # type: ignore[arg-type]
                                    wanted=lambda name: name in paths and is_image_path(name)):
        found.update(zip(batch.paths, batch.images, strict=True))
    missing = paths - set(found)
    if missing:
        raise ValueError(
            f"{len(missing)} images of the index are no longer in {index.source} (e.g. "
            f"{sorted(missing)[0]}): run `kedro run --pipeline embed` again."
        )
    return found
