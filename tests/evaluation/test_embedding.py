"""Tests of aavae.evaluation.features.embed_2d: the 2-D map of features."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from aavae import evaluation as ev
from tests.evaluation.helpers import gaussian_clusters


def test_embed_2d_subsamples_deterministically_and_keeps_labels_aligned():
    x, y = gaussian_clusters(300, 10, 3, spread=0.3, seed=1)
    coords, labels, rows = ev.embed_2d(x, y, method="pca", max_points=100, seed=0)

    assert coords.shape == (100, 2) and coords.dtype == np.float32
    assert np.all(np.diff(rows) > 0) and np.array_equal(labels, y[rows])
    again = ev.embed_2d(x, y, method="pca", max_points=100, seed=0)
    np.testing.assert_array_equal(coords, again[0])
    with pytest.raises(ValueError, match="method must be one of tsne, pca"):
        ev.embed_2d(x, y, method="umap")
    with pytest.raises(ValueError, match="labels must be 1-D with one label per feature row"):
        ev.embed_2d(x, y[:5])


def test_embed_2d_tsne_keeps_separated_clusters_apart():
    x, y = gaussian_clusters(60, 20, 3, spread=0.2, seed=2)
    # One OpenMP thread: t-SNE's threads crawl when the test machine's cores are busy.
    with threadpool_limits(limits=1, user_api="openmp"):
        coords, labels, _ = ev.embed_2d(x, y, method="tsne", seed=0)
    # each point's nearest 2-D neighbour belongs to its own cluster
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    assert np.mean(labels[distance.argmin(1)] == labels) >= 0.95
