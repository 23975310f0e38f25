"""Tests of aavae.reporting.plots: loss curves stay readable after a spike; the neighbour grid."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aavae.reporting.plots import curves_figure, figure_png, neighbour_grid_figure, off_scale_points
from aavae.reporting.report_html import VALIDATION_SPIKE_NOTE, _curves_note

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A real shape: the first validation loss of a digits run was about 37,000, later ones ~100.
SPIKED = {
    "train_loss": [(step, 400.0 / step + 90.0) for step in range(1, 31)],
    "val_loss": [(1, 37_000.0)] + [(step, 150.0 / step + 95.0) for step in range(2, 31)],
}


def vertical_share(figure, values) -> float:
    """How much of the axes' height the given y values span (0 = one line, 1 = all of it)."""
    ax = figure.axes[0]
    ys = [ax.transAxes.inverted().transform(ax.transData.transform((1.0, y)))[1] for y in values]
    return max(ys) - min(ys)


def off_axis_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].texts]


def test_an_early_spike_is_left_above_the_axis_and_the_other_values_fill_it():
    late = [y for _, y in SPIKED["train_loss"] + SPIKED["val_loss"][1:]]  # 95 ... 490
    auto = curves_figure(SPIKED, "loss")
    linear = curves_figure(SPIKED, "loss", yscale="linear")

    assert vertical_share(linear, late) < 0.02, "the reference: on a linear axis they are a line"
    assert vertical_share(auto, late) > 0.8
    assert auto.axes[0].get_ylim()[1] < 1000, "the spike is above the axis"
    assert off_axis_texts(auto) == ["val_loss 37,000"]
    assert off_scale_points(SPIKED) == {"val_loss": [(1, 37_000.0)]}


def test_a_spike_in_the_middle_of_training_is_marked_and_the_curves_stay_readable():
    # A CIFAR-10 run: one validation epoch at 15,515 among values of 900 to 1,000.
    val = [(epoch, 1000.0 - 2 * epoch) for epoch in range(1, 61)]
    val[29] = (30, 15_515.0)
    curves = {"train_loss": [(epoch, 1010.0 - 2 * epoch) for epoch in range(1, 61)], "val_loss": val}
    figure = curves_figure(curves, "loss")

    assert figure.axes[0].get_yscale() == "linear"
    ordinary = [y for _, y in curves["train_loss"] + val[:29] + val[30:]]
    assert vertical_share(figure, ordinary) > 0.8
    assert off_axis_texts(figure) == ["val_loss 15,515"]
    assert off_scale_points(curves) == {"val_loss": [(30, 15_515.0)]}


def test_a_steep_genuine_descent_keeps_every_point_and_gets_a_log_axis():
    descent = {"train_loss": [(step, 20_000.0 / step) for step in range(1, 31)]}
    figure = curves_figure(descent, "loss")

    assert off_scale_points(descent) == {}
    assert figure.axes[0].get_yscale() == "log"
    assert "log scale" in figure.axes[0].get_ylabel()
    assert off_axis_texts(figure) == []


def test_curves_that_cross_zero_get_a_symlog_axis_and_narrow_ones_stay_linear():
    crossing = {"train_loss": [(1, 300.0), (2, 100.0), (3, 40.0), (4, 10.0), (5, 2.0), (6, -3.0), (7, -8.0)]}
    figure = curves_figure(crossing, "loss")
    assert figure.axes[0].get_yscale() == "symlog"
    assert figure_png(figure, dpi=40).startswith(PNG_SIGNATURE)

    narrow = {"train_loss": [(1, 2.0), (2, 1.5)], "val_loss": [(1, 2.2), (2, 1.9)]}
    assert curves_figure(narrow, "loss").axes[0].get_yscale() == "linear"
    assert curves_figure({}, "loss").axes[0].get_yscale() == "linear"


def test_an_infinite_value_is_marked_not_drawn_to_infinity():
    curves = {"val_loss": [(1, 900.0), (2, 880.0), (3, float("inf")), (4, 860.0), (5, 850.0)]}
    figure = curves_figure(curves, "loss")
    assert off_scale_points(curves) == {"val_loss": [(3, float("inf"))]}
    assert figure.axes[0].get_ylim()[1] < 1000
    assert figure_png(figure, dpi=40).startswith(PNG_SIGNATURE)


def test_neighbour_grid_has_one_row_per_query_and_a_column_per_neighbour():
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    neighbours = [[rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)] * k for k in (4, 4, 2)]
    titles = [[f"{0.9 - j / 10:.2f}" for j in range(len(row))] for row in neighbours]

    figure = neighbour_grid_figure(queries, neighbours, ["a.jpg", "b.jpg", "c.jpg"], titles, "nn")

    assert len(figure.axes) == 3 * 5
    assert figure.axes[0].get_title() == "a.jpg" and figure.axes[1].get_title() == "0.90"
    assert not figure.axes[-1].axison, "a row with fewer neighbours leaves its cells blank"
    assert figure_png(figure, dpi=40).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_a_forced_scale_is_kept_with_every_point_on_the_axis(scale):
    figure = curves_figure(SPIKED, "loss", yscale=scale)
    assert figure.axes[0].get_yscale() == scale
    assert figure.axes[0].get_ylim()[1] > 37_000 and off_axis_texts(figure) == []


def test_the_report_explains_a_validation_spike_that_training_does_not_share():
    assert VALIDATION_SPIKE_NOTE in _curves_note(SPIKED, "linear")
    both = {"train_loss": [(step, 40_000.0 if step == 3 else 900.0) for step in range(8)],
            "val_loss": [(step, 37_000.0 if step == 3 else 900.0) for step in range(8)]}
    assert set(off_scale_points(both)) == {"train_loss", "val_loss"}
    assert VALIDATION_SPIKE_NOTE not in _curves_note(both, "linear"), "training spiked too: not the statistics"


def test_the_digits_runs_validation_spikes_leave_the_curves_the_whole_axis():
    # The default digits run of 2026-12-07 (steps 9, 19, 29, ...), its second validation loss
    # lowered from 5,706 to 4,000: four times its neighbours, a spike no ratio of five sees.
    train = [1087.8, 993.1, 949.6, 902.5, 885.5, 879.0, 875.2, 872.1, 871.3, 871.3, 868.0, 865.5]
    val = [1071.8, 4000.0, 454279.7, 916.0, 888.6, 877.9, 873.3, 873.2, 876.1, 870.3, 868.2, 862.4]
    curves = {"train_loss": list(zip(range(9, 120, 10), train, strict=True)), "val_loss": list(zip(range(9, 120, 10), val, strict=True))}
    figure = curves_figure(curves, "loss")

    assert off_scale_points(curves) == {"val_loss": [(29, 454279.7), (19, 4000.0)]}
    assert vertical_share(figure, train + val[:1] + val[3:]) > 0.8
    assert sorted(off_axis_texts(figure)) == ["val_loss 4,000", "val_loss 454,280"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), low=st.floats(1.0, 1e4), width=st.floats(0.01, 0.5),
       length=st.integers(8, 40), spikes=st.integers(1, 4), height=st.floats(2.0, 1000.0))
def test_no_number_or_height_of_spikes_squeezes_the_curves_into_a_band(seed, low, width, length, spikes, height):
    """Curves within a band, and 1-4 validation points at least twice the band's top anywhere
    (side by side too): the band keeps over a fifth of the axis, whether a spike is drawn on it
    (then the spike is at most four times the band's height above it) or left above it."""
    rng = np.random.default_rng(seed)
    train, val = (low * (1 + width * rng.random(length)) for _ in range(2))
    band = [*train, *val]
    spiked = rng.choice(length, size=spikes, replace=False)
    val[spiked] = max(band) * height * (1 + rng.random(spikes))
    steps = range(1, length + 1)
    figure = curves_figure({"train_loss": list(zip(steps, train, strict=True)), "val_loss": list(zip(steps, val, strict=True))}, "loss")

    kept = [*train, *np.delete(val, spiked)]
    assert vertical_share(figure, kept) > 0.2
    plt.close(figure)
