"""Tests of aavae.evaluation.paper_protocol: the paper's augmentations and SGD linear eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from aavae import evaluation as ev
from aavae.evaluation import paper_protocol
from aavae.evaluation.paper_protocol import paper_test_count
from tests.evaluation.helpers import MEAN, STD, random_images


def uint8_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(random_images(n, size, seed)).permute(0, 3, 1, 2)


def test_padded_random_crop_is_a_reflect_padded_crop_of_every_image_with_or_without_flip():
    images = uint8_batch(64, 8)
    views = paper_protocol.padded_random_crop(images, torch.Generator().manual_seed(0))

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
    first = paper_protocol.padded_random_crop(images, torch.Generator().manual_seed(3))
    second = paper_protocol.padded_random_crop(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="padding must be in"):
        paper_protocol.padded_random_crop(uint8_batch(2, 4), torch.Generator(), padding=4)


def test_random_resized_crop_keeps_the_size_and_the_pixel_range():
    images = uint8_batch(16, 12)
    views = paper_protocol.paper_train_views(images, "resized_crop", torch.Generator().manual_seed(0))
    assert views.shape == (16, 3, 12, 12)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.allclose(views, images.float() / 255.0)


def test_paper_augmentation_follows_the_papers_datasets():
    assert paper_protocol.paper_augmentation_for(32) == "crop"  # CIFAR-10
    assert paper_protocol.paper_augmentation_for(16) == "crop"
    assert paper_protocol.paper_augmentation_for(96) == "resized_crop"  # STL-10
    images = uint8_batch(2, 8)
    assert torch.equal(paper_protocol.paper_train_views(images, "none", torch.Generator()), images.float() / 255)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        paper_protocol.paper_train_views(images, "jitter", torch.Generator())


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
    assert result.confusion.sum() == 48, "scored on full test batches, as the paper's loader does (3 x 16)"
    assert result.chosen["test_images"] == 48
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
    with pytest.raises(ValueError, match="test_images must be uint8"):
        ev.paper_linear_eval(mean_colour_encoder(), *train, test[0].astype(np.float32), test[1],
                             MEAN, STD, 3)
    with pytest.raises(ValueError, match="train_labels must be 1-D"):
        ev.paper_linear_eval(mean_colour_encoder(), train[0], train[1][:3], *test, MEAN, STD, 3)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 20_000), batch_size=st.integers(1, 1024))
def test_the_scored_test_images_are_the_full_batches_of_the_one_batching_rule(count, batch_size):
    """The paper's test loader (drop_last=True) scores n - n % batch images; fewer than a batch:
    all of them (the paper's would score none). That is pretraining's batch_shape rule."""
    from aavae.common.batches import batch_shape

    papers = count - count % batch_size if count >= batch_size else count
    assert paper_test_count(count, batch_size) == papers
    if count:
        batches, per_batch = batch_shape(count, batch_size)
        assert batches * per_batch == papers and per_batch <= batch_size
