"""Tests of aavae.inference: a trained bundle's encoder on images of any size, as ingest sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aavae.data.imagefolder import read_imagefolder
from aavae.evaluation import extract_features, model_from_bundle
from aavae.inference import MU, REPRESENTATION, ImageEncoder, Preprocessing
from aavae.models import ModelSpec, build_model

SPEC = ModelSpec(encoder="resnet18", width=8, latent_dim=16, input_size=16)
NORM = {"mean": [0.4, 0.5, 0.45], "std": [0.25, 0.2, 0.3]}


def trained_looking_bundle() -> dict:
    torch.manual_seed(3)
    net = build_model(SPEC).train()
    with torch.no_grad():  # batch-norm statistics away from their initial values
        net.posterior(torch.randn(8, 3, 16, 16))
    return {"state_dict": net.state_dict(), "spec": SPEC.to_dict(), "normalization": NORM,
            "mlflow_run_id": "run-7", "dataset": "imagefolder", "objective": "aavae"}


def photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """RGB images of assorted sizes and aspect ratios, none at the training size."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (23, 57), (64, 64), (17, 16), (33, 90)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("resize", ["resize_crop", "resize"])
def test_images_of_any_size_are_brought_to_the_training_size_exactly_as_ingest_does(tmp_path, resize):
    images = photos(5)
    for split in ("train", "test"):
        for index, image in enumerate(images):
            folder = tmp_path / "tree" / split / "things"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")  # lossless: same pixels back
    ingested = read_imagefolder(tmp_path / "tree", image_size=16, resize=resize).splits["test"].images

    encoder = ImageEncoder.from_bundle(trained_looking_bundle(), resize=resize)
    np.testing.assert_array_equal(encoder.fit_images(images), ingested)


def test_features_equal_the_features_pipeline_call_on_the_same_pixels():
    bundle = trained_looking_bundle()
    images = np.random.default_rng(1).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    reference = extract_features(model_from_bundle(bundle).encoder, images, NORM["mean"], NORM["std"])

    encoder = ImageEncoder.from_bundle(bundle)
    np.testing.assert_array_equal(encoder.encode(images), reference)  # the same call: bit-equal
    # Another batch size may pick other conv kernels: equal to float32 rounding.
    np.testing.assert_allclose(encoder.encode(images, batch_size=4), reference, rtol=1e-5, atol=1e-5)
    assert encoder.encode(images).shape == (9, encoder.feature_dim) == (9, 64)


def test_mu_is_the_posterior_mean_of_the_same_pass():
    bundle = trained_looking_bundle()
    images = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    encoder = ImageEncoder.from_bundle(bundle)

    both = encoder.encode(images, return_mu=True)

    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(NORM["mean"])[:, None, None]) \
        / torch.tensor(NORM["std"])[:, None, None]
    with torch.no_grad():
        mu, _ = model_from_bundle(bundle).posterior(x)
    assert set(both) == {REPRESENTATION, MU}
    np.testing.assert_allclose(both[MU], mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(both[REPRESENTATION], encoder.encode(images))


def test_the_fast_bf16_path_stays_within_a_few_percent_and_keeps_the_neighbours():
    bundle = trained_looking_bundle()
    images = np.random.default_rng(4).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    exact = ImageEncoder.from_bundle(bundle).encode(images)
    fast = ImageEncoder.from_bundle(bundle, precision="bf16-mixed").encode(images)

    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert np.abs(fast - exact).max() <= 0.05 * np.abs(exact).max()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest = lambda x: np.argsort(-(unit(x) @ unit(x).T), axis=1)[:, 1]  # noqa: E731
    assert np.mean(nearest(fast) == nearest(exact)) >= 0.9
    with pytest.raises(ValueError, match="precision must be one of 32-true, bf16-mixed"):
        ImageEncoder.from_bundle(bundle, precision="fp8")


def test_grey_and_transparent_images_become_rgb_like_ingest():
    encoder = ImageEncoder.from_bundle(trained_looking_bundle())
    grey = np.full((20, 20), 77, np.uint8)
    rgba = np.dstack([np.full((16, 16, 3), 200, np.uint8), np.zeros((16, 16), np.uint8)])

    assert np.all(encoder.fit_image(grey) == 77) and encoder.fit_image(grey).shape == (16, 16, 3)
    assert np.all(encoder.fit_image(grey[:, :, None]) == 77)
    np.testing.assert_array_equal(encoder.fit_image(rgba), rgba[:, :, :3])


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "must hold uint8 pixels"),
        (np.zeros((8, 8, 2), np.uint8), "H x W x C with C = 1, 3 or 4"),
        (np.zeros((2, 8, 8, 3), np.uint8), "H x W x C with C = 1, 3 or 4"),
    ],
)
def test_bad_images_are_named(image, message):
    encoder = ImageEncoder.from_bundle(trained_looking_bundle())
    with pytest.raises(ValueError, match=message):
        encoder.fit_image(image, "image 3")


def test_preprocessing_refuses_an_unknown_resize_policy():
    with pytest.raises(ValueError, match="resize must be one of resize_crop, resize"):
        Preprocessing(16, "stretch", (0.5,) * 3, (0.5,) * 3)
