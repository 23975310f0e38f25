"""Tests of aavae.evaluation.probe: the L-BFGS linear probe and its weight-decay choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from torch import nn

from aavae.evaluation import linear_probe
from aavae.evaluation import probe as probe_module
from aavae.evaluation.probe import DEFAULT_WEIGHT_DECAYS, stratified_split
from tests.evaluation.helpers import GOOD, gaussian_clusters


def test_linear_probe_separates_separable_features():
    x, y = gaussian_clusters(600, 16, 4, spread=0.3, seed=0)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], 4, ["a", "b", "c", "d"])

    assert result.top1 >= 0.99
    assert result.top5 == 1.0  # top-min(5, 4) with four classes
    assert list(result.per_class) == ["a", "b", "c", "d"]
    assert set(result.chosen["validation_top1"]) == {repr(wd) for wd in DEFAULT_WEIGHT_DECAYS}
    # Every candidate is perfect on validation: the tie goes to the strongest regularisation.
    assert set(result.chosen["validation_top1"].values()) == {1.0}
    assert result.chosen["weight_decay"] == max(DEFAULT_WEIGHT_DECAYS)
    np.testing.assert_allclose(result.scores.sum(1), 1.0, rtol=1e-5)  # probabilities


@pytest.mark.parametrize("weight_decay", [1e-1, 1e-3])
def test_softmax_regression_reaches_the_scikit_learn_optimum(weight_decay):
    x, y = gaussian_clusters(300, 10, 3, spread=4.0, seed=1)  # overlapping: a finite optimum
    xs = probe_module._standardizer(torch.from_numpy(x))(torch.from_numpy(x))
    weight, bias = probe_module._fit_softmax_regression(xs, torch.from_numpy(y), 3, weight_decay)

    # scikit-learn's objective 0.5 ||W||^2 + C * sum(CE) is ours times 1 / (wd * n).
    reference = LogisticRegression(C=1 / (weight_decay * len(x)), tol=1e-10, max_iter=10_000)
    reference.fit(xs.double().numpy(), y)

    def objective(w, b):
        w, b = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        ce = nn.functional.cross_entropy(xs.double() @ w.T + b, torch.from_numpy(y))
        return float(ce + 0.5 * weight_decay * w.pow(2).sum())

    assert objective(weight, bias) == pytest.approx(
        objective(reference.coef_, reference.intercept_), rel=1e-5
    )


def _probe_with_test_set(train, probe_rows, other_rows):
    (x_train, y_train), (x_probe, y_probe), (x_other, y_other) = train, probe_rows, other_rows
    test_x = np.concatenate([x_probe, x_other])
    test_y = np.concatenate([y_probe, y_other])
    return linear_probe(x_train, y_train, test_x, test_y, 3, weight_decays=(1e-1, 1e-3, 1e-5))


def test_linear_probe_choices_do_not_depend_on_the_test_split():
    x, y = gaussian_clusters(500, 12, 3, spread=3.0, seed=2)
    train, probe_rows = (x[:400], y[:400]), (x[400:450], y[400:450])
    # Two very different "rest of the test split": shifted, scaled, differently sized/labelled.
    easy = (x[450:], y[450:])
    strange = (1000.0 + 50.0 * x[450:480] ** 2, np.zeros(30, dtype=np.int64))

    a = _probe_with_test_set(train, probe_rows, easy)
    b = _probe_with_test_set(train, probe_rows, strange)

    assert a.chosen == b.chosen
    np.testing.assert_array_equal(a.scores[:50], b.scores[:50])
    np.testing.assert_array_equal(a.predictions[:50], b.predictions[:50])


def test_linear_probe_fits_and_standardises_without_test_features(monkeypatch):
    x, y = gaussian_clusters(300, 6, 3, spread=2.0, seed=3)
    marker = 1e4  # no training feature is anywhere near it
    test_x = np.full((40, 6), marker, dtype=np.float32)
    fits, scalers = [], []

    real_fit, real_scaler = probe_module._fit_softmax_regression, probe_module._standardizer

    def spy_fit(features, *args, **kwargs):
        fits.append(float(features.abs().max()))
        return real_fit(features, *args, **kwargs)

    def spy_scaler(features):
        scalers.append(float(features.abs().max()))
        return real_scaler(features)

    monkeypatch.setattr(probe_module, "_fit_softmax_regression", spy_fit)
    monkeypatch.setattr(probe_module, "_standardizer", spy_scaler)
    linear_probe(x, y, test_x, np.zeros(40, dtype=np.int64), 3, weight_decays=(1e-2, 1e-4))

    assert len(fits) == 3 and len(scalers) == 2  # two candidates + refit; fit part + full train
    assert max(scalers) < 100 and max(fits) < 100  # test rows would show up as ~1e4


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_linear_probe_works_where_autograd_is_off(context):
    x, y = gaussian_clusters(200, 5, 2, spread=0.5, seed=9)
    with context():
        features = torch.from_numpy(x).clone()  # an inference tensor under inference_mode
        labels = torch.from_numpy(y).clone()
        result = linear_probe(features, labels, features, labels, 2, weight_decays=(1e-3, 1e-5))
    assert result.top1 >= 0.99


def test_stratified_split_takes_each_class_in_proportion():
    labels = np.repeat(np.arange(3), [100, 50, 10])
    fit_idx, val_idx = stratified_split(labels, 0.2, seed=0)

    assert np.bincount(labels[val_idx]).tolist() == [20, 10, 2]
    assert np.intersect1d(fit_idx, val_idx).size == 0
    assert np.union1d(fit_idx, val_idx).tolist() == list(range(160))
    np.testing.assert_array_equal(stratified_split(labels, 0.2, seed=0)[1], val_idx)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], val_idx)


def test_stratified_split_keeps_a_singleton_class_in_the_fit_part():
    labels = np.array([0, 0, 0, 0, 1])
    fit_idx, val_idx = stratified_split(labels, 0.5, seed=0)
    assert 4 in fit_idx and 4 not in val_idx


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.floats(0.05, 0.5), st.integers(0, 2**31))
def test_stratified_split_partitions_the_rows_and_takes_every_class_in_proportion(sizes, fraction, seed):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    splittable = sum(size for size in sizes if size > 1)  # a class of one sample stays in fit
    classes, validation = sum(size > 1 for size in sizes), math.ceil(fraction * splittable)
    if classes == 0 or min(validation, splittable - validation) < classes:  # no sample per class
        with pytest.raises(ValueError, match="raise val_fraction or give more training samples"):
            stratified_split(labels, fraction, seed)
        return
    fit_idx, val_idx = stratified_split(labels, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([fit_idx, val_idx])), np.arange(len(labels)))
    assert abs(len(val_idx) - fraction * splittable) <= 1
    for label, size in enumerate(sizes):
        taken = int((labels[val_idx] == label).sum())
        assert taken == 0 if size == 1 else abs(taken - len(val_idx) * size / splittable) <= 1

@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight_decays": ()}, "weight_decays is empty"),
        ({"weight_decays": (1e-2, -1.0)}, "weight_decays must be finite and non-negative"),
        ({"val_fraction": 0.0}, "val_fraction must be in"),
    ],
)
def test_linear_probe_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        linear_probe(*GOOD, GOOD[0], GOOD[1], 3, **options)


def correlated_clusters(n: int, dim: int, num_classes: int, seed: int):
    """Features like raw pixels: each column is its neighbour plus a small step (a random walk
    with a class-dependent drift), so neighbouring columns move together and the plain fit is
    ill-conditioned, as it is on images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    drift = 0.3 * rng.normal(size=(num_classes, dim))
    steps = rng.normal(size=(n, dim)) + drift[labels]
    return np.cumsum(steps, axis=1).astype(np.float32), labels


def fit_counting(xs, y, weight_decay, precondition):
    counts = []
    preconditioner = probe_module._preconditioner(xs) if precondition else None
    weight, bias = probe_module._fit_softmax_regression(
        xs, torch.from_numpy(y), 3, weight_decay, preconditioner=preconditioner, progress=counts.append)
    return weight, bias, max(counts)


def objective(xs, y, weight, bias, weight_decay):
    w, b = torch.as_tensor(weight, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)
    ce = nn.functional.cross_entropy(xs.double() @ w.T + b, torch.from_numpy(y))
    return float(ce + 0.5 * weight_decay * w.pow(2).sum())


@pytest.mark.parametrize("weight_decay", [1e-1, 1e-3, 1e-5])
def test_the_preconditioned_fit_reaches_the_scikit_learn_optimum(weight_decay):
    x, y = gaussian_clusters(300, 10, 3, spread=4.0, seed=1)
    xs = probe_module._standardizer(torch.from_numpy(x))(torch.from_numpy(x))
    weight, bias, _ = fit_counting(xs, y, weight_decay, precondition=True)

    reference = LogisticRegression(C=1 / (weight_decay * len(x)), tol=1e-10, max_iter=10_000)
    reference.fit(xs.double().numpy(), y)

    assert objective(xs, y, weight, bias, weight_decay) == pytest.approx(
        objective(xs, y, reference.coef_, reference.intercept_, weight_decay), rel=1e-5)


def test_preconditioning_reaches_the_same_optimum_in_a_fraction_of_the_evaluations():
    x, y = correlated_clusters(1500, 128, 3, seed=4)
    xs = probe_module._standardizer(torch.from_numpy(x))(torch.from_numpy(x))
    plain = fit_counting(xs, y, 1e-4, precondition=False)
    preconditioned = fit_counting(xs, y, 1e-4, precondition=True)

    assert preconditioned[2] * 3 <= plain[2], (preconditioned[2], plain[2])
    # The plain fit is the one that may stop short: the preconditioned optimum is no worse.
    assert objective(xs, y, *preconditioned[:2], 1e-4) <= objective(xs, y, *plain[:2], 1e-4) + 1e-6


def test_the_probe_scores_the_same_with_and_without_preconditioning():
    x, y = correlated_clusters(900, 48, 3, seed=5)
    grid = {"weight_decays": (1e-1, 1e-2, 1e-3)}
    plain = linear_probe(x[:600], y[:600], x[600:], y[600:], 3, precondition=False, **grid)
    fast = linear_probe(x[:600], y[:600], x[600:], y[600:], 3, **grid)

    assert fast.chosen == plain.chosen
    assert abs(fast.top1 - plain.top1) <= 2 / 300  # at most two test rows change their vote


def test_a_probe_too_wide_to_precondition_is_fitted_plainly(monkeypatch):
    monkeypatch.setattr(probe_module, "MAX_PRECONDITIONED_FEATURES", 3)
    built = []
    monkeypatch.setattr(probe_module, "_preconditioner", built.append)
    result = linear_probe(*GOOD, GOOD[0], GOOD[1], 3, weight_decays=(1e-2, 1e-4))
    assert built == [] and result.top1 > 0.5
