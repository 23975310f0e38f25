"""The few-label linear probe: its draws, its scores, and the tables that lead with it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aavae.evaluation import few_label_probe
from aavae.evaluation.probe import labelled_draw
from aavae.reporting.report import accuracy_columns, conclusion, leads, results_table
from aavae.reporting.report import main as report_main
from aavae.reporting.report_html import render_report


def clusters(per_class: int, classes: int, spread: float, seed: int, dims: int = 8):
    """Gaussian blobs around well-separated class centres; ``spread`` sets how much they overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 4
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dims))).astype(np.float32), labels


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6), k=st.integers(1, 12),
       seed=st.integers(0, 2**31))
def test_a_draw_takes_k_distinct_rows_of_every_class(sizes, k, seed):
    """(few_label_probe skips a count over the smallest class: see the test of the skip.)"""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(seed).shuffle(labels)
    k = min(k, min(sizes))
    rows = labelled_draw(labels, k, np.random.default_rng(seed))
    assert len(set(rows.tolist())) == len(rows) == k * len(sizes)
    assert np.bincount(labels[rows], minlength=len(sizes)).tolist() == [k] * len(sizes)


def test_separable_features_score_perfectly_and_noise_scores_near_chance():
    x, y = clusters(40, 5, spread=0.1, seed=0)
    xt, yt = clusters(40, 5, spread=0.1, seed=0)
    scores = few_label_probe(x, y, xt, yt, 5, labels_per_class=(1, 3), draws=4, progress=False)
    assert [(s.labels_per_class, s.mean, s.sd, s.draws) for s in scores] == [(1, 1.0, 0.0, 4), (3, 1.0, 0.0, 4)]

    rng = np.random.default_rng(1)
    noise = few_label_probe(rng.normal(size=(400, 8)), rng.integers(0, 4, 400), rng.normal(size=(400, 8)),
                            rng.integers(0, 4, 400), 4, labels_per_class=(5,), draws=10, progress=False)
    assert abs(noise[0].mean - 0.25) < 0.08


def test_more_labels_help_and_the_draws_depend_only_on_the_seed():
    x, y = clusters(60, 6, spread=3.0, seed=2)
    xt, yt = clusters(60, 6, spread=3.0, seed=3)
    first = few_label_probe(x, y, xt, yt, 6, labels_per_class=(1, 20), draws=8, seed=5, progress=False)
    again = few_label_probe(x, y, xt, yt, 6, labels_per_class=(20,), draws=8, seed=5, progress=False)
    other = few_label_probe(x, y, xt, yt, 6, labels_per_class=(1,), draws=8, seed=6, progress=False)
    assert first[1].mean > first[0].mean + 0.05, "twenty labels a class beat one"
    assert again[0] == first[1], "a count's draws do not depend on the other counts"
    assert other[0].mean != first[0].mean, "another seed draws other images"


def test_a_count_above_the_smallest_class_is_skipped_with_a_warning(caplog):
    x, y = clusters(10, 3, spread=0.5, seed=0)
    x, y = x[2:], y[2:]  # class 0 keeps 8 images
    with caplog.at_level(logging.WARNING, logger="aavae.evaluation.probe"):
        scores = few_label_probe(x, y, x, y, 3, labels_per_class=(1, 9), draws=2, progress=False)
    assert [s.labels_per_class for s in scores] == [1]
    assert "smallest class has 8 training images" in caplog.text and "[9]" in caplog.text


@pytest.mark.parametrize("kwargs, message", [({"draws": 0}, "draws must be at least 1"),
                                             ({"labels_per_class": (0, 1)}, "positive counts")])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    x, y = clusters(5, 2, spread=0.5, seed=0)
    with pytest.raises(ValueError, match=message):
        few_label_probe(x, y, x, y, 2, progress=False, **kwargs)


def _metrics(model_1: float, raw_1: float) -> dict:
    def scores(one: float, full: float) -> dict:
        return {"few_label_1_top1": one, "few_label_1_top1_sd": 0.04, "few_label_10_top1": 0.87,
                "few_label_10_top1_sd": 0.02, "linear_top1": full, "linear_top5": 1.0, "knn_top1": 0.8,
                "knn_top5": 1.0, "per_class": {}}
    return {"objective": "aavae", "dataset": "digits", "epochs": 30, "few_label_draws": 20,
            **scores(model_1, 0.96), "baselines": {"random_init": scores(0.57, 0.95), "raw_pixels": scores(raw_1, 0.96)}}


def test_the_tables_lead_with_the_fewest_labels_and_say_what_to_conclude(tmp_path, capsys):
    metrics = _metrics(0.665, 0.598)
    assert [key for key, _ in accuracy_columns(metrics)] == [
        "few_label_1_top1", "few_label_10_top1", "linear_top1", "linear_top5", "knn_top1"]
    table = results_table(metrics).splitlines()
    assert table[0].startswith("| features | 1 label/class | 10 labels/class | linear top-1 (all labels)")
    assert table[2].startswith("| aavae (pretrained) | 66.50% ± 4.0 | 87.00% ± 2.0 | 96.00% |")
    assert [(heading, round(lead, 1), best) for heading, lead, best in leads(metrics)][0] == (
        "1 label/class", 6.7, "raw_pixels")
    said = conclusion(metrics)
    assert "ahead of the best baseline (raw_pixels) by 6.7 points" in said and "20 draws" in said
    assert "where labels are scarce" in said, "ahead with one label, level with all of them"

    behind = conclusion(_metrics(0.55, 0.598))
    assert "behind the best baseline (raw_pixels) by 4.8 points" in behind
    assert "where labels are scarce" not in behind

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert report_main([str(path)]) == 0
    assert "ahead of the best" in capsys.readouterr().out
    document = render_report(metrics, {})
    assert "66.50% &plusmn; 4.0" in document and "1 label/class" in document
    assert "ahead of the best baseline (raw_pixels)" in document


def test_metrics_without_the_few_label_probe_keep_the_old_table():
    metrics = _metrics(0.6, 0.5)
    for scores in (metrics, *metrics["baselines"].values()):
        for key in [k for k in scores if k.startswith("few_label_")]:
            del scores[key]
    assert results_table(metrics).splitlines()[0] == (
        "| features | linear top-1 (all labels) | linear top-5 | kNN top-1 |")
    assert conclusion(metrics).startswith("With linear top-1 (all labels), the aavae features are level with")
