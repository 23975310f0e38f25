"""Shared test data for the evaluation tests: feature clusters, images, a small encoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def gaussian_clusters(n: int, dim: int, num_classes: int, spread: float, seed: int):
    """Features around random class centres; ``spread`` sets how much the classes overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 3.0
    labels = rng.integers(0, num_classes, n)
    features = centres[labels] + spread * rng.normal(size=(n, dim))
    return features.astype(np.float32), labels


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),  # would make train-mode outputs random: catches a missing eval()
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def random_images(n: int = 10, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


#: Valid classifier arguments (features, labels) that a bad-input test changes one at a time.
GOOD = gaussian_clusters(60, 4, 3, spread=1.0, seed=8)
