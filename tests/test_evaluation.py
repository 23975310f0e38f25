"""Tests of aavae.evaluation: feature extraction, linear probe, kNN and their reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from aavae import evaluation as ev
from aavae.evaluation import (
    ClassifierResult,
    accuracy_report,
    extract_features,
    knn_classify,
    linear_probe,
    stratified_split,
)


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


# --------------------------------------------------------------------------- extract_features


def test_extract_features_shape_dtype_and_normalisation():
    images = random_images(5, 4)
    features = extract_features(nn.Flatten(), images, MEAN, STD, batch_size=2)

    expected = (images / 255.0 - np.array(MEAN)) / np.array(STD)  # N x H x W x C
    expected = expected.transpose(0, 3, 1, 2).reshape(5, -1)  # the encoder sees N x C x H x W
    assert features.dtype == np.float32
    assert features.shape == (5, 3 * 4 * 4)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_extract_features_restores_train_mode_and_leaves_statistics_alone():
    encoder = small_encoder().train()
    running_mean = encoder[1].running_mean.clone()

    features = extract_features(encoder, random_images(), MEAN, STD, batch_size=4)

    assert features.shape == (10, 8)
    assert encoder.training and all(m.training for m in encoder.modules())
    assert torch.equal(encoder[1].running_mean, running_mean)  # eval mode: BN stats untouched


def test_extract_features_keeps_eval_mode_of_an_eval_encoder():
    encoder = small_encoder().eval()
    extract_features(encoder, random_images(), MEAN, STD)
    assert not encoder.training


def test_extract_features_reads_a_read_only_memmap_deterministically(tmp_path):
    images = random_images(12)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    encoder = small_encoder().train()

    first = extract_features(encoder, mapped, MEAN, STD, batch_size=5)
    second = extract_features(encoder, mapped, MEAN, STD, batch_size=5)
    in_memory = extract_features(encoder, images, MEAN, STD, batch_size=12, channels_last=False)

    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, in_memory, rtol=1e-5, atol=1e-6)


def test_extract_features_accepts_a_uint8_tensor():
    images = random_images(4)
    from_tensor = extract_features(small_encoder(), torch.from_numpy(images), MEAN, STD)
    from_array = extract_features(small_encoder(), images, MEAN, STD)
    np.testing.assert_array_equal(from_tensor, from_array)


@pytest.mark.parametrize(
    ("images", "mean", "std", "message"),
    [
        (random_images().astype(np.float32), MEAN, STD, "images must be uint8"),
        (random_images()[0], MEAN, STD, "images must be uint8 N x H x W x C"),
        (random_images()[:0], MEAN, STD, "images is empty"),
        (random_images(), (0.5, 0.5), STD, "mean must have one value per image channel"),
        (random_images(), MEAN, (0.2, 0.0, 0.2), "std must be positive"),
        (random_images(), (125.3, 123.0, 113.9), STD, "0-255 scale"),
    ],
)
def test_extract_features_rejects_bad_input(images, mean, std, message):
    with pytest.raises(ValueError, match=message):
        extract_features(small_encoder(), images, mean, std)


def test_extract_features_rejects_an_encoder_that_returns_a_tuple():
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(TypeError, match="encoder must return a tensor"):
        extract_features(TwoOutputs(), random_images(), MEAN, STD)


# --------------------------------------------------------------------------- linear_probe


def test_linear_probe_separates_separable_features():
    x, y = gaussian_clusters(600, 16, 4, spread=0.3, seed=0)
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], 4, ["a", "b", "c", "d"])

    assert result.top1 >= 0.99
    assert result.top5 == 1.0  # top-min(5, 4) with four classes
    assert list(result.per_class) == ["a", "b", "c", "d"]
    assert set(result.chosen["validation_top1"]) == {repr(wd) for wd in ev.DEFAULT_WEIGHT_DECAYS}
    # Every candidate is perfect on validation: the tie goes to the strongest regularisation.
    assert set(result.chosen["validation_top1"].values()) == {1.0}
    assert result.chosen["weight_decay"] == max(ev.DEFAULT_WEIGHT_DECAYS)
    np.testing.assert_allclose(result.scores.sum(1), 1.0, rtol=1e-5)  # probabilities


@pytest.mark.parametrize("weight_decay", [1e-1, 1e-3])
def test_softmax_regression_reaches_the_scikit_learn_optimum(weight_decay):
    x, y = gaussian_clusters(300, 10, 3, spread=4.0, seed=1)  # overlapping: a finite optimum
    xs = ev._Standardizer.fit(torch.from_numpy(x))(torch.from_numpy(x))
    weight, bias = ev._fit_softmax_regression(xs, torch.from_numpy(y), 3, weight_decay)

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

    real_fit, real_scaler = ev._fit_softmax_regression, ev._Standardizer.fit

    def spy_fit(features, *args, **kwargs):
        fits.append(float(features.abs().max()))
        return real_fit(features, *args, **kwargs)

    def spy_scaler(features):
        scalers.append(float(features.abs().max()))
        return real_scaler(features)

    monkeypatch.setattr(ev, "_fit_softmax_regression", spy_fit)
    monkeypatch.setattr(ev._Standardizer, "fit", staticmethod(spy_scaler))
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


# --------------------------------------------------------------------------- knn_classify


def brute_force_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """The kNN vote written out with loops, as the reference."""
    unit_train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for row, query in enumerate(test_x):
        unit_query = query / np.linalg.norm(query)
        similarities = [float(unit_query @ candidate) for candidate in unit_train]
        nearest = sorted(range(len(similarities)), key=lambda i: -similarities[i])[:k]
        for i in nearest:
            scores[row, train_y[i]] += np.exp(similarities[i] / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 7, 1000])
def test_knn_matches_a_brute_force_reference(k):
    x, y = gaussian_clusters(90, 8, 4, spread=4.0, seed=4)
    train_x, train_y, test_x, test_y = x[:60], y[:60], x[60:], y[60:]

    result = knn_classify(train_x, train_y, test_x, test_y, 4, k=k, temperature=0.1, batch_size=7)
    reference = brute_force_knn(train_x, train_y, test_x, 4, k, 0.1)

    np.testing.assert_allclose(result.scores, reference, rtol=1e-4)
    np.testing.assert_array_equal(result.predictions, reference.argmax(1))
    assert result.top1 == pytest.approx(float(np.mean(reference.argmax(1) == test_y)))
    assert result.chosen["k"] == min(k, 60)


def test_knn_top5_counts_the_true_class_among_the_best_five():
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0, 0], [0, 0, 0, 0, 0, 0, 9], [1, 1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([4, 5, 5])
    result = ev._result(scores, labels, [str(i) for i in range(7)], {})
    # row 0: class 4 ranks 5th (hit); row 1: class 5 ties at 0 behind classes 0-4 (miss);
    # row 2: all tie, class 5 ranks 6th by the lower-index rule (miss).
    assert result.top5 == pytest.approx(1 / 3)
    assert result.top1 == 0.0


# --------------------------------------------------------------------------- results and reports


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


# --------------------------------------------------------------------------- bad input


GOOD = gaussian_clusters(60, 4, 3, spread=1.0, seed=8)


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


@pytest.mark.parametrize(
    ("options", "message"),
    [({"k": 0}, "k must be a positive"), ({"temperature": 0.0}, "temperature must be positive")],
)
def test_knn_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        knn_classify(*GOOD, GOOD[0], GOOD[1], 3, **options)
