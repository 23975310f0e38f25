"""A 2-D map of features (PCA, t-SNE) for looking at what was learned."""

from __future__ import annotations

import numpy as np
import torch

from aavae.common.progress import Progress
from aavae.evaluation.features import ArrayLike, _features

EMBEDDING_METHODS = ("tsne", "pca")


def embed_2d(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D map of feature rows: ``(coordinates (M, 2), labels (M,), row indices (M,))``.

    At most ``max_points`` rows are used (a seeded random subset, in row order). ``tsne``
    first reduces to 50 dimensions with PCA (the usual denoising step), then runs
    scikit-learn's t-SNE with PCA initialisation; ``pca`` keeps the first two components.
    scikit-learn reports nothing while it works, so ``progress`` shows the time elapsed
    (t-SNE of 2,000 points: tens of seconds on a small CPU).
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"method must be one of {', '.join(EMBEDDING_METHODS)}, got {method!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    x = _features(features, "features", torch.device("cpu")).numpy().astype(np.float64)
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must be 1-D with one label per feature row ({len(x)}), got {y.shape}")
    if len(x) < 2:
        raise ValueError("features needs at least two rows to embed")
    rows = np.arange(len(x))
    if len(x) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    x, y = x[rows], y[rows]

    from sklearn.decomposition import PCA  # scikit-learn is only needed for this map

    components = min(50 if method == "tsne" else 2, x.shape[1], len(x))
    name = "t-SNE" if method == "tsne" else "PCA"
    with Progress(f"{name} of {len(x):,} points", enabled=progress):
        reduced = PCA(n_components=components, random_state=seed).fit_transform(x)
        if method == "tsne" and len(x) > 4:
            from sklearn.manifold import TSNE

            perplexity = min(30.0, (len(x) - 1) / 3)
            reduced = TSNE(
                n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed,
            ).fit_transform(reduced)
    coords = np.zeros((len(x), 2), np.float32)
    coords[:, : min(2, reduced.shape[1])] = reduced[:, :2]
    return coords, y, rows
