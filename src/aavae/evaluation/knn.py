"""Cosine nearest neighbours: the weighted kNN classifier and plain neighbour retrieval."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aavae.common.progress import Progress
from aavae.evaluation.features import ArrayLike, _checked_inputs, _default_device, _features
from aavae.evaluation.scoring import ClassifierResult, _result


def knn_classify(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ClassifierResult:
    """Weighted kNN on cosine similarity (the InstDisc/DINO/solo-learn convention).

    Each test row's ``k`` most similar training rows (``k`` capped at the training size) vote
    ``exp(similarity / temperature)`` for their class; the summed votes are the class scores.
    Test rows go ``batch_size`` at a time (memory: ``batch_size x len(train_x)``), and
    ``progress`` counts them (CIFAR-10's raw pixels: minutes on a small CPU).
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    dev = _default_device(device)
    xtr, ytr, xte, yte, names = _checked_inputs(
        train_x, train_y, test_x, test_y, num_classes, class_names, dev
    )
    k = min(k, len(xtr))

    with torch.inference_mode(), Progress("kNN", len(xte), "test rows", enabled=progress) as shown:
        score_chunks = []
        for similarity, neighbour in _most_similar(xtr, xte, k, batch_size):
            votes = torch.zeros(len(neighbour), num_classes, device=dev)
            score_chunks.append(votes.scatter_add_(1, ytr[neighbour], (similarity / temperature).exp()))
            shown.advance(len(neighbour))
        scores = torch.cat(score_chunks)
    return _result(scores, yte, names, {"k": k, "temperature": float(temperature)})


def nearest_neighbours(
    bank: ArrayLike, queries: ArrayLike, k: int = 5, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``bank`` most cosine-similar to each query: ``(indices, similarities)``,
    both ``(len(queries), k)``, most similar first (``k`` capped at ``len(bank)``)."""
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    cpu = torch.device("cpu")
    bank_t, query_t = _features(bank, "bank", cpu), _features(queries, "queries", cpu)
    if bank_t.shape[1] != query_t.shape[1]:
        raise ValueError(
            f"bank has {bank_t.shape[1]} feature columns but queries have {query_t.shape[1]}"
        )
    with torch.inference_mode():
        similarities, indices = zip(*_most_similar(bank_t, query_t, min(k, len(bank_t)), batch_size), strict=True)
    return torch.cat(indices).numpy(), torch.cat(similarities).numpy()


def _most_similar(bank: Tensor, queries: Tensor, k: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(similarities, indices)`` of the ``k`` rows of ``bank`` most cosine-similar to each query,
    ``batch_size`` queries at a time (memory stays at ``batch_size x len(bank)``)."""
    bank = F.normalize(bank, dim=1)
    for start in range(0, len(queries), batch_size):
        yield (F.normalize(queries[start : start + batch_size], dim=1) @ bank.T).topk(k, dim=1)
