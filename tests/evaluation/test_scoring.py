"""Tests of aavae.evaluation.scoring and the input checks of aavae.evaluation.features: rankings, confusion matrices, reports, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aavae.evaluation import ClassifierResult, accuracy_report, knn_classify, linear_probe
from aavae.evaluation.scoring import _result
from tests.evaluation.helpers import GOOD, gaussian_clusters


def test_knn_top5_counts_the_true_class_among_the_best_five():
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0, 0], [0, 0, 0, 0, 0, 0, 9], [1, 1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([4, 5, 5])
    result = _result(scores, labels, [str(i) for i in range(7)], {})
    # row 0: class 4 ranks 5th (hit); row 1: class 5 ties at 0 behind classes 0-4 (miss);
    # row 2: all tie, class 5 ranks 6th by the lower-index rule (miss).
    assert result.top5 == pytest.approx(1 / 3)
    assert result.top1 == 0.0

@st.composite
def tied_rankings(draw):
    """Scores from three values only, so most rows hold ties; and a true class per row."""
    rows, classes = draw(st.integers(1, 12)), draw(st.integers(2, 9))
    scores = draw(arrays(np.int64, (rows, classes), elements=st.integers(0, 2)))
    labels = draw(arrays(np.int64, rows, elements=st.integers(0, classes - 1)))
    return torch.from_numpy(scores).float(), torch.from_numpy(labels)


@given(tied_rankings())
def test_top5_counts_every_correct_prediction_whatever_the_ties(ranking):
    scores, labels = ranking
    result = _result(scores, labels, [str(i) for i in range(scores.shape[1])], {})
    hits = result.predictions == labels.numpy()
    assert result.top5 >= result.top1 == pytest.approx(hits.mean())
    if hits.all():
        assert result.top5 == 1.0


@pytest.mark.parametrize("method", ["probe", "knn"])
def test_results_are_consistent_with_their_confusion_matrix(method):
    x, y = gaussian_clusters(400, 10, 6, spread=5.0, seed=5)  # overlapping: real mistakes
    names = [f"class{i}" for i in range(6)]
    if method == "probe":
        result = linear_probe(x[:300], y[:300], x[300:], y[300:], 6, names, weight_decays=(1e-2,))
    else:
        result = knn_classify(x[:300], y[:300], x[300:], y[300:], 6, names, k=20)
    test_y, confusion = y[300:], result.confusion

    assert 0.0 < result.top1 < 1.0
    assert result.top5 >= result.top1
    assert confusion.shape == (6, 6) and confusion.sum() == 100
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(test_y, minlength=6))
    np.testing.assert_array_equal(confusion.sum(0), np.bincount(result.predictions, minlength=6))
    assert np.trace(confusion) / 100 == pytest.approx(result.top1)
    for i, name in enumerate(names):
        assert result.per_class[name] == pytest.approx(confusion[i, i] / confusion[i].sum())


def test_accuracy_report_is_plain_json_with_none_for_absent_classes():
    x, y = gaussian_clusters(120, 5, 3, spread=1.0, seed=6)
    test_y = np.where(y[100:] == 2, 0, y[100:])  # class 2 never appears in the test split
    result = knn_classify(x[:100], y[:100], x[100:], test_y, 3, ["x", "y", "z"], k=5)

    report = accuracy_report(result)
    json.dumps(report, allow_nan=False)
    assert set(report) == {"top1", "top5", "per_class", "chosen"}
    assert report["per_class"]["z"] is None
    assert report["top1"] == pytest.approx(result.top1)


def test_classifier_result_is_the_public_return_type():
    x, y = gaussian_clusters(50, 4, 2, spread=1.0, seed=7)
    assert isinstance(knn_classify(x[:40], y[:40], x[40:], y[40:], 2, k=3), ClassifierResult)

@pytest.mark.parametrize("classify", [linear_probe, knn_classify])
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            (GOOD[0], GOOD[1], GOOD[0][:, :3], GOOD[1], 3),
            "train_x has 4 feature columns but test_x has 3",
        ),
        (
            (GOOD[0], GOOD[1][:-1], GOOD[0], GOOD[1], 3),
            "train_y must be 1-D with one label per row",
        ),
        ((GOOD[0], GOOD[1], GOOD[0], GOOD[1][:5], 3), "test_y must be 1-D with one label per row"),
        ((GOOD[0], GOOD[1], GOOD[0], GOOD[1] + 1, 3), r"test_y must lie in \[0, num_classes\)"),
        ((GOOD[0], GOOD[1] - 1, GOOD[0], GOOD[1], 3), r"train_y must lie in \[0, num_classes\)"),
        ((GOOD[0][:0], GOOD[1][:0], GOOD[0], GOOD[1], 3), "train_x is empty"),
        ((GOOD[0], GOOD[1], GOOD[0][:0], GOOD[1][:0], 3), "test_x is empty"),
        ((GOOD[0][0], GOOD[1], GOOD[0], GOOD[1], 3), "train_x must be a 2-D"),
        ((GOOD[0], GOOD[1].astype(float), GOOD[0], GOOD[1], 3), "train_y must hold integer"),
        ((GOOD[0] * np.nan, GOOD[1], GOOD[0], GOOD[1], 3), "train_x contains NaN"),
        ((GOOD[0], GOOD[1], GOOD[0], GOOD[1], 1), "num_classes must be an integer >= 2"),
    ],
)
def test_classifiers_name_the_bad_argument(classify, arguments, message):
    with pytest.raises(ValueError, match=message):
        classify(*arguments)


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 3"):
        knn_classify(*GOOD, GOOD[0], GOOD[1], 3, ["a", "b"])
