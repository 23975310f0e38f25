"""Tests of aavae.evaluation.features: frozen-encoder features of uint8 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aavae.evaluation import extract_features
from tests.evaluation.helpers import MEAN, STD, random_images, small_encoder


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


def test_extract_features_zooms_as_the_recipes_originals_when_asked():
    # The paper's STL-10 evaluates Resize(105) + CenterCrop(96) of every image.
    from torchvision.transforms import v2

    encoder = torch.nn.Sequential(torch.nn.Flatten())
    images = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    zoomed = v2.CenterCrop(96)(v2.Resize(105, antialias=True)(images.permute(0, 3, 1, 2).float() / 255))
    expected = ((zoomed - 0.5) / 0.25).flatten(1).numpy()
    got = extract_features(encoder, images, [0.5] * 3, [0.25] * 3, original_resize=105, channels_last=False)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(("precision", "fast_bf16", "autocast"), [
    ("auto", True, True), ("auto", False, False), ("32-true", True, False), ("bf16-mixed", False, True),
])
def test_evaluate_precision_decides_the_features_autocast(monkeypatch, precision, fast_bf16, autocast):
    from aavae.common import hardware
    from aavae.config import EvaluateConfig

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: fast_bf16)
    config = EvaluateConfig(precision=precision, accelerator="cpu")
    assert hardware.runs_in_bf16(config.precision, config.accelerator) is autocast


def test_bf16_features_are_those_of_float32_within_bf16_rounding():
    encoder, images = small_encoder(), random_images(16, 8)
    exact = extract_features(encoder, images, MEAN, STD, autocast_bf16=False)
    rounded = extract_features(encoder, images, MEAN, STD, autocast_bf16=True)
    assert not np.array_equal(exact, rounded), "autocast was not applied"
    np.testing.assert_allclose(rounded, exact, rtol=0.05, atol=0.02)
