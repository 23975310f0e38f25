"""Tests of aavae.evaluation: features, linear probe, kNN, the paper protocol, checkpoints, maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
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
from aavae.models import AAVAENet, ModelSpec, build_model
from aavae.views import channel_stats


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


# --------------------------------------------------------------------------- the paper's augmentation


def uint8_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(random_images(n, size, seed)).permute(0, 3, 1, 2)


def test_padded_random_crop_is_a_reflect_padded_crop_of_every_image_with_or_without_flip():
    images = uint8_batch(64, 8)
    views = ev.padded_random_crop(images, torch.Generator().manual_seed(0))

    assert views.shape == (64, 3, 8, 8) and views.dtype == torch.float32
    padded = F.pad(images.float() / 255.0, (4, 4, 4, 4), mode="reflect")
    offsets, flips = set(), set()
    for image, view in zip(padded, views, strict=True):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(
                view,
                image[:, top : top + 8, left : left + 8].flip(-1)
                if flip
                else image[:, top : top + 8, left : left + 8],
            )
        ]
        assert matches, "every view is a crop of the reflect-padded image, maybe mirrored"
        offsets.add(matches[0][:2])
        flips.add(matches[0][2])
    assert flips == {False, True}
    assert len(offsets) > 20  # offsets are drawn per image, not once per batch


def test_padded_random_crop_is_seeded_and_refuses_a_padding_wider_than_the_image():
    images = uint8_batch(8, 8)
    first = ev.padded_random_crop(images, torch.Generator().manual_seed(3))
    second = ev.padded_random_crop(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="padding must be in"):
        ev.padded_random_crop(uint8_batch(2, 4), torch.Generator(), padding=4)


def test_random_resized_crop_keeps_the_size_and_the_pixel_range():
    images = uint8_batch(16, 12)
    views = ev.random_resized_crop(images, torch.Generator().manual_seed(0))
    assert views.shape == (16, 3, 12, 12)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.allclose(views, images.float() / 255.0)


def test_paper_augmentation_follows_the_papers_datasets():
    assert ev.paper_augmentation_for(32) == "crop"  # CIFAR-10
    assert ev.paper_augmentation_for(16) == "crop"
    assert ev.paper_augmentation_for(96) == "resized_crop"  # STL-10
    images = uint8_batch(2, 8)
    assert torch.equal(ev.paper_train_views(images, "none", torch.Generator()), images.float() / 255)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        ev.paper_train_views(images, "jitter", torch.Generator())


# --------------------------------------------------------------------------- paper_linear_eval


def colour_images(n: int, seed: int, size: int = 12):
    """Three classes told apart by their dominant colour channel, with pixel noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    colour = np.full((n, 3), 60.0)
    colour[np.arange(n), labels] = 200.0
    images = colour[:, None, None, :] + rng.normal(0, 25, (n, size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def mean_colour_encoder() -> nn.Module:
    """A frozen encoder with batch norm (statistics must stay untouched) and no weights to learn."""
    encoder = nn.Sequential(nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder[0].running_mean.fill_(0.1)
    return encoder


def test_paper_linear_eval_learns_a_separable_image_set_with_the_encoder_frozen():
    train, test = colour_images(120, 0), colour_images(60, 1)
    encoder = mean_colour_encoder().train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}

    result = ev.paper_linear_eval(
        encoder, *train, *test, MEAN, STD, 3, ["red", "green", "blue"],
        epochs=2, batch_size=16, learning_rate=0.5,
    )

    assert result.top1 >= 0.95
    assert list(result.per_class) == ["red", "green", "blue"]
    assert result.confusion.sum() == 60
    assert result.chosen["augmentation"] == "crop" and result.chosen["nesterov"] is True
    assert len(result.chosen["train_loss"]) == 2
    assert result.chosen["train_loss"][1] < result.chosen["train_loss"][0]
    assert encoder.training, "the caller's train/eval mode is restored"
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: the encoder must stay frozen"


def test_paper_linear_eval_uses_the_papers_optimiser_settings_and_is_seeded():
    train, test = colour_images(40, 2, size=8), colour_images(20, 3, size=8)
    run = lambda: ev.paper_linear_eval(  # noqa: E731
        mean_colour_encoder(), *train, *test, MEAN, STD, 3, epochs=1, batch_size=64,
        augmentation="resized_crop",
    )
    first, second = run(), run()

    assert first.chosen["learning_rate"] == pytest.approx(0.1 * 64 / 256)  # no int() truncation
    assert first.chosen["momentum"] == 0.9 and first.chosen["weight_decay"] == 0.0
    assert first.chosen["augmentation"] == "resized_crop"
    np.testing.assert_array_equal(first.scores, second.scores)


def test_paper_linear_eval_works_where_autograd_is_off():
    train, test = colour_images(30, 4, size=8), colour_images(10, 5, size=8)
    with torch.inference_mode():
        result = ev.paper_linear_eval(mean_colour_encoder(), *train, *test, MEAN, STD, 3, epochs=1)
    assert 0.0 <= result.top1 <= 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"augmentation": "colour"}, "augmentation must be one of"),
    ],
)
def test_paper_linear_eval_rejects_bad_options(options, message):
    train, test = colour_images(10, 0, size=8), colour_images(5, 1, size=8)
    with pytest.raises(ValueError, match=message):
        ev.paper_linear_eval(mean_colour_encoder(), *train, *test, MEAN, STD, 3, **options)


def test_paper_linear_eval_names_the_bad_image_argument():
    train, test = colour_images(10, 0, size=8), colour_images(5, 1, size=8)
    with pytest.raises(ValueError, match="test_images: images must be uint8"):
        ev.paper_linear_eval(mean_colour_encoder(), *train, test[0].astype(np.float32), test[1],
                             MEAN, STD, 3)
    with pytest.raises(ValueError, match="train_labels must be 1-D"):
        ev.paper_linear_eval(mean_colour_encoder(), train[0], train[1][:3], *test, MEAN, STD, 3)


# --------------------------------------------------------------------------- models to evaluate

SPEC = ModelSpec(encoder="resnet18", width=8, latent_dim=16, input_size=16)


def trained_looking_model(spec: ModelSpec = SPEC) -> AAVAENet:
    torch.manual_seed(1)
    net = build_model(spec).train()
    with torch.no_grad():  # move batch-norm statistics off their initial values
        net.posterior(torch.randn(4, 3, spec.input_size, spec.input_size))
    return net.eval()


def encoder_output(net: AAVAENet, images: np.ndarray, mean, std) -> np.ndarray:
    return extract_features(net.encoder, images, mean, std)


def test_a_project_bundle_given_by_path_keeps_its_own_spec_and_normalisation(tmp_path):
    net = trained_looking_model()
    bundle = {"state_dict": net.state_dict(), "spec": SPEC.to_dict(), "objective": "aavae",
              "normalization": {"mean": [0.2, 0.3, 0.4], "std": [0.3, 0.3, 0.3]},
              "class_names": ["old"], "mlflow_run_id": "abc", "epochs": 7}
    path = tmp_path / "aavae_model.pt"
    torch.save(bundle, path)
    images = random_images(6, 16)

    loaded = ev.bundle_from_checkpoint(path, ModelSpec(width=16), images, ["a", "b"])

    assert loaded["spec"] == SPEC.to_dict()  # the file's spec, not the one passed for paper files
    assert loaded["normalization"] == bundle["normalization"]
    assert loaded["class_names"] == ["a", "b"] and loaded["checkpoint"] == str(path)
    assert loaded["mlflow_run_id"] == "abc" and loaded["epochs"] == 7
    rebuilt = ev.model_from_bundle(loaded)
    np.testing.assert_array_equal(encoder_output(rebuilt, images, MEAN, STD),
                                  encoder_output(net, images, MEAN, STD))


def test_a_paper_checkpoint_given_by_path_is_read_into_the_spec_with_dataset_statistics(tmp_path):
    net = trained_looking_model()
    state = dict(net.state_dict())
    state["online_finetuner.weight"] = torch.randn(10, 64)  # the paper's module holds more
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 4, "global_step": 50, "state_dict": state}, path)
    images = random_images(6, 16)

    loaded = ev.bundle_from_checkpoint(path, SPEC, images, ["a", "b"])

    mean, std = channel_stats(images)
    np.testing.assert_allclose(loaded["normalization"]["mean"], mean)
    np.testing.assert_allclose(loaded["normalization"]["std"], std)
    assert loaded["epochs"] == 5 and loaded["objective"] == "paper checkpoint"
    assert loaded["mlflow_run_id"] is None and loaded["class_names"] == ["a", "b"]
    rebuilt = ev.model_from_bundle(loaded)
    np.testing.assert_array_equal(encoder_output(rebuilt, images, MEAN, STD),
                                  encoder_output(net, images, MEAN, STD))


def test_checkpoint_errors_name_the_file(tmp_path):
    images = random_images(4, 16)
    with pytest.raises(FileNotFoundError, match="absent.ckpt does not exist"):
        ev.bundle_from_checkpoint(tmp_path / "absent.ckpt", SPEC, images, ["a", "b"])
    wrong = tmp_path / "wide.ckpt"
    torch.save({"state_dict": build_model(ModelSpec(width=16, input_size=16)).state_dict()}, wrong)
    with pytest.raises(ValueError, match="wide.ckpt does not fit"):
        ev.bundle_from_checkpoint(wrong, SPEC, images, ["a", "b"])
    broken_bundle = tmp_path / "bundle.pt"
    torch.save({"state_dict": {}, "spec": SPEC.to_dict(), "normalization": {}}, broken_bundle)
    with pytest.raises(ValueError, match="model bundle .*bundle.pt cannot be rebuilt"):
        ev.bundle_from_checkpoint(broken_bundle, SPEC, images, ["a", "b"])


def test_model_from_bundle_names_missing_keys():
    with pytest.raises(ValueError, match="is not a model bundle: expected a dict with state_dict"):
        ev.model_from_bundle({"state_dict": {}})


def test_baseline_encoders_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = ev.baseline_encoder("random_init", SPEC, seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    again = ev.baseline_encoder("random_init", SPEC, seed=0)
    other = ev.baseline_encoder("random_init", SPEC, seed=1)
    weight = "conv1.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert isinstance(ev.baseline_encoder("raw_pixels", SPEC, 0), nn.Flatten)
    with pytest.raises(ValueError, match="unknown baseline 'pixels'"):
        ev.baseline_encoder("pixels", SPEC, 0)


def test_resolve_model_node_reads_evaluate_checkpoint(tmp_path):
    from aavae.data.imageset import ImageSet
    from aavae.pipelines.features.nodes import resolve_model

    net = trained_looking_model()
    path = tmp_path / "paper.ckpt"
    torch.save({"state_dict": net.state_dict()}, path)
    images = ImageSet(random_images(6, 16), np.array([0, 1] * 3), ("a", "b"), "train")
    model_params = {"encoder": "resnet18", "width": 8, "latent_dim": 16}
    trained = {"state_dict": {}, "spec": {}, "normalization": {}}

    assert resolve_model(trained, images, {}, model_params) is trained
    bundle = resolve_model(trained, images, {"checkpoint": str(path)}, model_params)
    assert bundle["checkpoint"] == str(path) and bundle["spec"]["input_size"] == 16
    with pytest.raises(ValueError, match=r"evaluate.checkpoint='.*missing.ckpt': checkpoint"):
        resolve_model(trained, images, {"checkpoint": str(tmp_path / "missing.ckpt")}, model_params)
    with pytest.raises(ValueError, match="No model to evaluate"):
        resolve_model(None, images, {}, model_params)


# --------------------------------------------------------------------------- looking at features


def test_nearest_neighbours_match_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    index, similarity = ev.nearest_neighbours(bank, queries, k=5, batch_size=3)

    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(index, np.argsort(-cosine, axis=1)[:, :5])
    np.testing.assert_allclose(similarity, np.sort(cosine, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert ev.nearest_neighbours(bank[:3], queries, k=10)[0].shape == (7, 3)
    with pytest.raises(ValueError, match="bank has 6 feature columns but queries have 5"):
        ev.nearest_neighbours(bank, queries[:, :5])


def test_embed_2d_subsamples_deterministically_and_keeps_labels_aligned():
    x, y = gaussian_clusters(300, 10, 3, spread=0.3, seed=1)
    coords, labels, rows = ev.embed_2d(x, y, method="pca", max_points=100, seed=0)

    assert coords.shape == (100, 2) and coords.dtype == np.float32
    assert np.all(np.diff(rows) > 0) and np.array_equal(labels, y[rows])
    again = ev.embed_2d(x, y, method="pca", max_points=100, seed=0)
    np.testing.assert_array_equal(coords, again[0])
    with pytest.raises(ValueError, match="method must be one of tsne, pca"):
        ev.embed_2d(x, y, method="umap")
    with pytest.raises(ValueError, match="labels must be 1-D with one label per feature row"):
        ev.embed_2d(x, y[:5])


def test_embed_2d_tsne_keeps_separated_clusters_apart():
    x, y = gaussian_clusters(60, 20, 3, spread=0.2, seed=2)
    # One OpenMP thread: t-SNE's threads crawl when the test machine's cores are busy.
    with threadpool_limits(limits=1, user_api="openmp"):
        coords, labels, _ = ev.embed_2d(x, y, method="tsne", seed=0)
    # each point's nearest 2-D neighbour belongs to its own cluster
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    assert np.mean(labels[distance.argmin(1)] == labels) >= 0.95
