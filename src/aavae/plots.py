"""Figures people would rather look at than read: image grids, curves, confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files and MLflow, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def image_grid(
    columns: Sequence[np.ndarray], column_titles: Sequence[str], title: str | None = None
) -> Figure:
    """One row per image, one column per variant; each array is uint8 N x H x W x C."""
    rows = len(columns[0])
    cols = len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for c, (images, name) in enumerate(zip(columns, column_titles)):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(images[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix with the counts written in the cells."""
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    totals = confusion.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(confusion / totals, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                share = confusion[i, j] / totals[i, 0]
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
