"""The one progress helper (aavae.common.progress): plain lines at a modest rate in a pipe or log, a bar
in a terminal, a heartbeat for opaque phases; and every long evaluation phase reports through it."""

from __future__ import annotations

import logging
import threading

import pytest

from aavae.common import progress as progress_module
from aavae.common.progress import Progress, duration, progress_scope
from aavae.evaluation import embed_2d, extract_features, knn_classify, linear_probe
from tests.evaluation.helpers import MEAN, STD, gaussian_clusters, random_images, small_encoder


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="aavae.common.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "aavae.common.progress"]


@pytest.fixture
def every_call(monkeypatch):
    """A line at every update, as a phase of many minutes would give one every 30 seconds."""
    monkeypatch.setattr(progress_module, "EVERY_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "HEARTBEAT_SECONDS", 0.01)


def test_plain_lines_say_how_far_what_is_being_done_and_the_time_left(lines, every_call):
    with progress_scope("raw_pixels"), Progress("kNN", total=4, unit="test rows", terminal=False) as shown:
        shown.advance(2)
        shown.note("batch 2")
    logged = lines()
    assert logged[0].startswith("raw_pixels: kNN: 2/4 test rows (50%): ")
    assert "elapsed, about" in logged[0] and logged[0].endswith("left")
    assert logged[1].startswith("raw_pixels: kNN: 2/4 test rows (50%), batch 2: ")
    assert logged[-1].startswith("raw_pixels: kNN: done in ") and logged[-1].endswith("(2 test rows)")


def test_a_phase_shorter_than_the_interval_logs_nothing(lines):
    with Progress("kNN", total=3, terminal=False) as shown:
        shown.advance(3)
    assert lines() == []


def test_an_opaque_phase_reports_the_time_elapsed_from_a_heartbeat(lines, every_call):
    three_lines, seen = threading.Event(), []

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)
            if len(seen) >= 3:
                three_lines.set()

    counter = Counter()
    logging.getLogger("aavae.common.progress").addHandler(counter)
    try:
        with Progress("t-SNE of 2,000 points", terminal=False):
            # the library call, which nothing advances: only the heartbeat can speak
            assert three_lines.wait(timeout=60), "no heartbeat lines"
    finally:
        logging.getLogger("aavae.common.progress").removeHandler(counter)
    logged = lines()
    assert logged[0].startswith("t-SNE of 2,000 points: ") and logged[0].endswith(" s elapsed")
    assert logged[-1].startswith("t-SNE of 2,000 points: done in ")


def test_a_terminal_gets_a_bar_not_lines(lines, capsys, monkeypatch, every_call):
    monkeypatch.setattr(progress_module, "BAR_DELAY_SECONDS", 0.0)
    with Progress("features", total=10, unit="images", terminal=True) as shown:
        shown.advance(10)
    assert "features: 100%" in capsys.readouterr().out
    assert lines() == []


def test_disabled_progress_shows_nothing(lines, capsys, every_call):
    with Progress("features", total=10, enabled=False, terminal=True) as shown:
        shown.advance(5)
    with Progress("features", total=10, enabled=False, terminal=False) as shown:
        shown.advance(5)
    assert lines() == [] and capsys.readouterr().out == ""


@pytest.mark.parametrize(("seconds", "text"), [(42, "42 s"), (720, "12 min"), (6480, "1.8 h")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text


def test_every_long_evaluation_phase_reports_its_progress(lines, every_call):
    x, y = gaussian_clusters(200, 8, 3, spread=1.0, seed=0)
    linear_probe(x[:150], y[:150], x[150:], y[150:], 3, weight_decays=(1e-2, 1e-4))
    knn_classify(x[:150], y[:150], x[150:], y[150:], 3, k=5)
    embed_2d(x, y, method="tsne")  # scikit-learn says nothing: the heartbeat speaks
    extract_features(small_encoder(), random_images(6), MEAN, STD, batch_size=2)
    logged = lines()

    probe = [line for line in logged if line.startswith("linear probe: ")]
    assert any(line.startswith("linear probe: 0/3 fits (0%), fit 1/3, weight decay 0.01, evaluation 1: ")
               for line in probe), probe
    assert any("refit on all training rows 3/3, weight decay " in line for line in probe), probe
    assert probe[-1].startswith("linear probe: done in ") and probe[-1].endswith("(3 fits)")
    assert any(line.startswith("kNN: 50/50 test rows (100%)") for line in logged), logged
    assert any(line.startswith("t-SNE of 200 points: done in ") for line in logged), logged
    assert any(line.startswith("features: 6/6 images (100%)") for line in logged), logged
