"""Figures people would rather look at than read: image grids, curves, confusion matrices."""

from __future__ import annotations

import io
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
    rows = [[(images[r], name if r == 0 else "", None, 0) for images, name in zip(columns, column_titles, strict=True)]
            for r in range(len(columns[0]))]
    return _image_rows(rows, (1.3, 1.3, 0.4), title, (8, 10))


def _image_rows(rows: list[list[tuple]], size: tuple[float, float, float], title: str | None,
                fontsize: tuple[int, int]) -> Figure:
    """A grid of images, each row a list of ``(image, caption, frame colour or None, frame width)``
    cells (blank cells end a shorter row); ``size``: a cell's width and height and the title's
    room, in inches; ``fontsize``: the captions' and the title's."""
    cols = max(len(row) for row in rows)
    figsize = (size[0] * cols, size[1] * len(rows) + size[2])
    fig, axes = plt.subplots(len(rows), cols, figsize=figsize, squeeze=False)
    for row, row_axes in zip(rows, axes, strict=True):
        for c, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            image, caption, colour, width = row[c]
            ax.imshow(image, interpolation="nearest")
            ax.set_title(caption, fontsize=fontsize[0], color=colour or "black")
            for spine in ax.spines.values() if colour else ():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
    if title:
        fig.suptitle(title, fontsize=fontsize[1])
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
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7,
                    color="white" if count / totals[i, 0] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_png(figure: Figure, dpi: int = 120) -> bytes:
    """The figure as PNG bytes (for embedding in a report)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def embedding_figure(
    coords: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str
) -> Figure:
    """A 2-D scatter of embedded samples, one colour per class, with a legend."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    n = len(class_names)  # a qualitative map's own colours up to 20 classes, then spread over turbo
    colours = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")(
        np.arange(n) if n <= 20 else np.linspace(0, 1, n))
    for index, name in enumerate(class_names):
        chosen = labels == index
        if chosen.any():
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=8, alpha=0.8,
                       color=colours[index], label=str(name), linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if len(class_names) <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2,
                  frameon=False)
    fig.tight_layout()
    return fig


def curves_figure(
    series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str = "step",
    ylabel: str = "loss", yscale: str = "auto",
) -> Figure:
    """Line plots of named ``(x, y)`` series on shared axes (e.g. train and val loss).

    One bad point must not flatten the others (a CIFAR-10 run's one validation loss of 15,515
    among values of 900 to 1,000): :func:`off_scale_points` are left above the axis, each a
    triangle at its top edge with its value beside it. Then ``yscale="auto"`` picks a log axis
    when the rest span more than :data:`LOG_SPAN` (symlog with zero or negative values), so a
    steep but genuine descent keeps its start in view. ``"linear"``, ``"log"`` and ``"symlog"``
    force one (and keep every point on the axis).
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    off_scale = off_scale_points(series) if yscale == "auto" else {}
    kept: list[float] = []
    for name, points in series.items():
        if len(points):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
            kept += [y for point in points if point not in off_scale.get(name, ()) for y in point[1:]]
    values = np.array(kept, dtype=float)
    values = values[np.isfinite(values)]
    scale, options = _y_scale(values) if yscale == "auto" else (yscale, {})
    ax.set_yscale(scale, **options)
    if any(off_scale.values()) and len(values):
        _mark_off_scale(ax, off_scale, values, scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if scale == "linear" else f"{ylabel} ({scale} scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both" if scale != "linear" else "major")
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: The ratio of largest to smallest magnitude beyond which curves get a log axis.
LOG_SPAN = 20.0
#: A point this many times the median of its neighbours is a spike, drawn above the axis.
SPIKE_FACTOR = 5.0


def off_scale_points(
    series: dict[str, Sequence[tuple[float, float]]],
) -> dict[str, list[tuple[float, float]]]:
    """The points of each series that :func:`curves_figure` leaves above its axis.

    A point is a spike when it is more than :data:`SPIKE_FACTOR` times the median of its
    neighbours in its own series (up to two on each side; positive values), or infinite.
    Judged against neighbours, not the whole curve: a loss that starts at 3,000 and settles
    at 900 descends a few-fold per epoch and keeps every point; one epoch 16 times its
    neighbours (or a first validation 200 times the next ones) is a spike. A series of fewer
    than three points has no neighbours to judge by. Then the highest few points of all the
    series together (at most a quarter of them) are left above the axis too when keeping them
    would squeeze the others into a band (:func:`_squeezing_tops`): a spike only four times its
    neighbours, or two spikes side by side, flatten the curves as much as one forty times.
    """
    found: dict[str, list[tuple[float, float]]] = {}
    for name, points in series.items():
        ys = np.array([y for _, y in points], dtype=float)
        for index, point in enumerate(points if len(ys) >= 3 else ()):
            around = np.concatenate([ys[max(0, index - 2):index], ys[index + 1:index + 3]])
            around = around[np.isfinite(around)]
            if not len(around):
                continue
            middle = float(np.median(around))
            if np.isposinf(ys[index]) or (middle > 0 and ys[index] > SPIKE_FACTOR * middle):
                found.setdefault(name, []).append(tuple(point))
    kept = [(name, tuple(point)) for name, points in series.items() for point in points
            if tuple(point) not in found.get(name, ()) and np.isfinite(point[1])]
    for name, point in _squeezing_tops(kept):
        found.setdefault(name, []).append(point)
    return found


def _squeezing_tops(points: list[tuple[str, tuple[float, float]]]) -> list[tuple[str, tuple[float, float]]]:
    """The fewest highest points whose gap above the rest is over three times the rest's spread
    (the rest would fill under a quarter of the axis) and over half the rest's top value (a
    narrow curve a little above a flat one stays), or none."""
    ranked = sorted(points, key=lambda item: item[1][1], reverse=True)
    for count in range(1, len(ranked) // 4 + 1):
        lowest_top, rest = ranked[count - 1][1][1], [y for _, (_, y) in ranked[count:]]
        if lowest_top - rest[0] > max(3 * (rest[0] - rest[-1]), 0.5 * abs(rest[0])):
            return ranked[:count]
    return []


def _mark_off_scale(ax, off_scale: dict[str, list[tuple[float, float]]], kept: np.ndarray, scale: str) -> None:
    """Limit the axis to the kept values and mark each spike at its top edge, with its value."""
    low, high = float(kept.min()), float(kept.max())
    if scale == "linear":
        pad = 0.08 * (high - low) or 0.08 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    elif scale == "log":
        ax.set_ylim(low / 1.15, high * 1.15)
    else:
        ax.set_ylim(min(low, 0.0) - 0.08 * abs(low), high * 1.15)
    top = ax.get_ylim()[1]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    for position, (name, points) in enumerate(off_scale.items()):
        for x, y in points:
            ax.plot([x], [top], marker="^", markersize=7, color=colours.get(name, "black"),
                    clip_on=False, zorder=5, label="_off_scale")
            ax.annotate(f"{name} {value_text(y)}", (x, top), xytext=(5, -11 - 9 * position),
                        textcoords="offset points", fontsize=7, color=colours.get(name, "black"))


def value_text(value: float) -> str:
    """A metric value as a person writes it: ``37,428``, ``139.9``, ``0.0123``."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _y_scale(values: np.ndarray) -> tuple[str, dict]:
    magnitudes = np.abs(values[values != 0])
    if len(magnitudes) < 2 or magnitudes.max() <= LOG_SPAN * magnitudes.min():
        return "linear", {}
    if (values > 0).all():
        return "log", {}
    # Linear within the smallest typical magnitude (a tenth of the values are smaller), log beyond.
    threshold = float(np.percentile(magnitudes, 10))
    return "symlog", {"linthresh": 10 ** np.floor(np.log10(threshold))}


def retrieval_figure(
    queries: np.ndarray,
    neighbours: np.ndarray,
    query_labels: np.ndarray,
    neighbour_labels: np.ndarray,
    class_names: Sequence[str],
    similarities: np.ndarray | None = None,
) -> Figure:
    """Each query (uint8 H x W x C) beside its nearest images, labelled by class.

    ``neighbours`` is ``(Q, K, H, W, C)``; a neighbour of the query's class is framed green,
    another class red.
    """
    rows = []
    for r, labels in enumerate(neighbour_labels):
        rows.append([(queries[r], f"query: {class_names[query_labels[r]]}", "black", 1)])
        for j, label in enumerate(labels):
            caption = str(class_names[label]) + (f" {similarities[r, j]:.2f}" if similarities is not None else "")
            rows[-1].append((neighbours[r, j], caption, "tab:green" if label == query_labels[r] else "tab:red", 2))
    title = "Nearest training images by cosine similarity of the learned features"
    return _image_rows(rows, (1.4, 1.5, 0.4), title, (7, 9))


def neighbour_grid_figure(
    queries: np.ndarray,
    neighbours: Sequence[Sequence[np.ndarray]],
    query_titles: Sequence[str],
    neighbour_titles: Sequence[Sequence[str]],
    title: str,
) -> Figure:
    """One row per query (uint8 H x W x C): the query, framed, then its nearest images.

    Unlike :func:`retrieval_figure` nothing here needs classes: the captions are whatever the
    caller gives (file names, similarities), so it shows neighbours in any image folder.
    """
    rows = [[(query, name[:18], "black", 2),
             *((image, caption[:18], "tab:blue", 1) for image, caption in zip(found, captions, strict=True))]
            for query, name, found, captions in zip(queries, query_titles, neighbours, neighbour_titles, strict=True)]
    return _image_rows(rows, (1.4, 1.55, 0.5), title, (7, 9))
