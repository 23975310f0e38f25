"""Tests of aavae.evaluation.knn: the weighted cosine kNN and nearest-neighbour retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from aavae.evaluation import knn_classify, nearest_neighbours
from tests.evaluation.helpers import GOOD, gaussian_clusters


def brute_force_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """The kNN vote written out with loops, as the reference."""
    unit_train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for row, query in enumerate(test_x):
        unit_query = query / np.linalg.norm(query)
        similarities = [float(unit_query @ candidate) for candidate in unit_train]
        nearest = sorted(range(len(similarities)), key=lambda i: -similarities[i])[:k]
        for i in nearest:
            scores[row, train_y[i]] += np.exp(similarities[i] / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 7, 1000])
def test_knn_matches_a_brute_force_reference(k):
    x, y = gaussian_clusters(90, 8, 4, spread=4.0, seed=4)
    train_x, train_y, test_x, test_y = x[:60], y[:60], x[60:], y[60:]

    result = knn_classify(train_x, train_y, test_x, test_y, 4, k=k, temperature=0.1, batch_size=7)
    reference = brute_force_knn(train_x, train_y, test_x, 4, k, 0.1)

    np.testing.assert_allclose(result.scores, reference, rtol=1e-4)
    np.testing.assert_array_equal(result.predictions, reference.argmax(1))
    assert result.top1 == pytest.approx(float(np.mean(reference.argmax(1) == test_y)))
    assert result.chosen["k"] == min(k, 60)

@pytest.mark.parametrize(
    ("options", "message"),
    [({"k": 0}, "k must be a positive"), ({"temperature": 0.0}, "temperature must be positive")],
)
def test_knn_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        knn_classify(*GOOD, GOOD[0], GOOD[1], 3, **options)

def test_nearest_neighbours_match_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    index, similarity = nearest_neighbours(bank, queries, k=5, batch_size=3)

    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(index, np.argsort(-cosine, axis=1)[:, :5])
    np.testing.assert_allclose(similarity, np.sort(cosine, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert nearest_neighbours(bank[:3], queries, k=10)[0].shape == (7, 3)
    with pytest.raises(ValueError, match="bank has 6 feature columns but queries have 5"):
        nearest_neighbours(bank, queries[:, :5])
