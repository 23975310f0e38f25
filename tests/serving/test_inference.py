"""Tests of aavae.serving.inference and aavae.serving.contract: a trained bundle's encoder on images of any
size, as ingest sees them, and what a served encoder accepts (an image batch, a JSON request)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from aavae.data.imagefolder import read_imagefolder
from aavae.evaluation import extract_features, model_from_bundle
from aavae.serving.contract import (
    CONTRACT,
    ImageBatchError,
    InputLimits,
    RequestError,
    ScoringRequest,
    check_image_batch,
)
from aavae.serving.inference import MU, REPRESENTATION, ImageEncoder, ServingPreprocessing
from tests.helpers.bundles import NORM, trained_looking_bundle


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
        ServingPreprocessing(image_size=16, resize="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)


# -- what a served encoder takes: check_image_batch ---------------------------------------------

LIMITS = InputLimits(max_image_side=64, max_batch_size=8)
UINT8 = np.zeros((2, 16, 16, 3), np.uint8)


@pytest.mark.parametrize(
    ("images", "sent", "problem"),
    [
        (np.random.default_rng(0).random((2, 16, 16, 3)), "an array of float64 with shape (2, 16, 16, 3)",
         "floats, which the model does not round or scale"),
        (np.ones((2, 16, 16, 3)), "float64", "floats"),  # whole numbers, still floats
        (np.full((1, 4, 4, 3), 256), "int64 with shape (1, 4, 4, 3) with values from 256 to 256",
         "pixels are 0-255"),
        (np.full((1, 4, 4, 3), -1, np.int16), "int16", "values from -1 to -1"),
        (np.zeros((2, 16, 16, 5), np.uint8), "(2, 16, 16, 5)", "5 channels, where C must be 1 (grey), 3 (RGB) or 4"),
        (np.zeros((2, 3, 16, 16), np.uint8), "(2, 3, 16, 16)", "channels first? send images.transpose(0, 2, 3, 1)"),
        (np.zeros((2, 16, 16), np.uint8), "(2, 16, 16)", "images[..., None]"),
        (np.zeros((16, 16), np.uint8), "(16, 16)", "image[None, :, :, None]"),
        (np.zeros((0, 16, 16, 3), np.uint8), "(0, 16, 16, 3)", "an empty batch"),
        ([], "a list with shape (0,)", "an empty batch"),
        (np.zeros((9, 4, 4, 3), np.uint8), "(9, 4, 4, 3)", "9 images, over this model's max_batch_size of 8"),
        (np.zeros((1, 65, 10, 3), np.uint8), "(1, 65, 10, 3)", "65 x 10 pixels: a side over this model's max_image_side of 64"),
        (np.zeros((1, 0, 10, 3), np.uint8), "(1, 0, 10, 3)", "images without pixels"),
        (np.zeros((1, 4, 4, 3), bool), "bool", "booleans"),
        ([[[["1", "2", "3"]]]], "<U1", "text"),
        ([[[[None, 1, 2]]]], "object", "not all integers"),
        ([[[[2**70, 1, 2]]]], "object", "not all integers"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)], "a list that is not one N x H x W x C block",
         "The detected shape was (2,) + inhomogeneous part.); send images of one size per request"),
    ],
)
def test_a_batch_outside_the_contract_is_refused_naming_what_was_sent_and_what_is_expected(images, sent, problem):
    with pytest.raises(ImageBatchError) as refused:
        check_image_batch(images, LIMITS)

    message = str(refused.value)
    assert message.startswith(f"The encoder takes {CONTRACT}, at most 8 images of at most 64 pixels a side; got ")
    assert sent in message and problem in message
    assert len(message) < 600, "the message describes the input, it does not print it"


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=5), empty_axis=st.integers(0, 4),
       as_list=st.booleans())
def test_a_batch_without_values_is_never_described_as_floats(shape, empty_axis, as_list):
    """numpy calls an empty list float64 (and MLflow's parse hands the model that array): a batch
    with no value has no type to refuse. It was refused as floats, with a remedy about scaling."""
    shape[empty_axis % len(shape)] = 0
    sent = np.zeros(shape).tolist() if as_list else np.zeros(shape)
    with pytest.raises(ImageBatchError) as refused:
        check_image_batch(sent, LIMITS)
    assert "float" not in str(refused.value) and str(np.asarray(sent).shape) in str(refused.value)


def test_a_long_list_or_a_huge_first_image_is_refused_before_numpy_copies_it():
    huge = np.broadcast_to(np.zeros(3, np.uint8), (50_000, 50_000, 3))  # a view: 7.5 GB if copied
    with pytest.raises(ImageBatchError, match="a list whose first image has 50000 x 50000 pixels"):
        check_image_batch([huge, huge], LIMITS)
    with pytest.raises(ImageBatchError, match="a list of 9 items: 9 images, over this model's max_batch_size"):
        check_image_batch([huge] * 9, LIMITS)


def test_uint8_batches_pass_as_they_are_and_integer_lists_in_range_become_uint8():
    assert check_image_batch(UINT8, LIMITS) is UINT8  # no copy of what already fits
    from_json = np.arange(2 * 3 * 3 * 4).reshape(2, 3, 3, 4).tolist()  # integers, as JSON brings them
    checked = check_image_batch(from_json, LIMITS)
    assert checked.dtype == np.uint8 and checked.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(checked, np.asarray(from_json))


def test_input_limits_must_be_positive_integers():
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="max_image_side must be a positive integer"):
            InputLimits(max_image_side=bad, max_batch_size=8)  # type: ignore[arg-type]


@functools.cache
def small_encoder() -> ImageEncoder:
    return ImageEncoder.from_bundle(trained_looking_bundle())


DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "float16", "float32",
          "float64", "bool", "complex64", "object", "<U1")
SMALL = InputLimits(max_image_side=4, max_batch_size=3)


@st.composite
def arrays_of_any_kind(draw: st.DrawFn) -> np.ndarray:
    """Arrays of every dtype kind and 0 to 5 axes; sides of 0 to 6 around SMALL's limits,
    channel counts 0 to 5, values inside and just outside 0-255."""
    near_the_contract = draw(st.booleans())  # half the draws: integer batches, mostly valid
    dtype = np.dtype(draw(st.sampled_from(DTYPES[:8] if near_the_contract else DTYPES)))
    ndim = 4 if near_the_contract else draw(st.integers(0, 5))
    shape = [draw(st.integers(0, 6)) for _ in range(ndim)]
    if ndim == 4:
        shape[0] = draw(st.integers(0, 4))
        shape[1:3] = [draw(st.integers(1 if near_the_contract else 0, 5)) for _ in range(2)]
        shape[3] = draw(st.sampled_from([1, 3, 4, 0, 2, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.integers(0, draw(st.sampled_from([2, 256])), shape)
    outlier = draw(st.sampled_from([None, None, -1, 256, 300, 2**40]))  # one value off 0-255
    if outlier is not None and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = outlier
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    if dtype.kind == "O":
        return values.astype(object)  # Python ints in an object array: not a numeric dtype
    if dtype.kind == "U":
        return values.astype(str).astype(dtype)
    if dtype.kind == "b":
        return values.astype(bool)
    return (values / draw(st.sampled_from([1, 255]))).astype(dtype)


def accepted_by_contract(images: np.ndarray, limits: InputLimits) -> bool:
    """The contract written out independently: integers 0-255, N x H x W x C, within limits."""
    return (
        images.dtype.kind in "iu" and images.ndim == 4
        and 1 <= images.shape[0] <= limits.max_batch_size
        and all(1 <= side <= limits.max_image_side for side in images.shape[1:3])
        and images.shape[3] in (1, 3, 4)
        and int(images.min()) >= 0 and int(images.max()) <= 255
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=arrays_of_any_kind(), as_list=st.booleans())
@example(images=np.full((3, 4, 4, 1), 255, np.int64), as_list=True)  # JSON's integers, grey
@example(images=np.zeros((1, 1, 4, 4), np.uint16), as_list=False)  # RGBA, one pixel high
@example(images=np.ones((1, 2, 2, 3), np.float16), as_list=True)  # whole-number floats
@example(images=np.full((1, 2, 2, 3), 256, np.int16), as_list=False)  # one past 255
@example(images=np.full((1, 2, 2, 3), -1, np.int64), as_list=True)  # below 0, from JSON
def test_every_input_is_encoded_or_refused_with_the_named_error(images, as_list):
    """Any dtype, shape and channel count, as an array or as the nested list JSON brings:
    accepted exactly when the contract says so, and then encoded; else an ImageBatchError
    naming the dtype and shape. Nothing else escapes (no numpy or Pillow error, no crash)."""
    sent = images.tolist() if as_list and images.dtype.kind != "O" else images
    expected = accepted_by_contract(np.asarray(sent), SMALL)
    event("accepted" if expected else "refused")
    try:
        checked = check_image_batch(sent, SMALL)
    except ImageBatchError as error:
        assert not expected, f"refused an input the contract accepts: {error}"
        if isinstance(sent, list) and len(sent) > SMALL.max_batch_size:  # refused before numpy
            assert f"got a list of {len(sent)} items" in str(error)
        elif not isinstance(sent, list) or "whose first image has" not in str(error):
            assert str(np.asarray(sent).shape) in str(error)
            assert np.asarray(sent).size == 0 or str(np.asarray(sent).dtype) in str(error)
        return
    assert expected, f"accepted {np.asarray(sent).dtype} {np.asarray(sent).shape}"
    assert checked.dtype == np.uint8
    np.testing.assert_array_equal(checked, np.asarray(sent))
    features = small_encoder().encode(checked)
    assert features.shape == (len(checked), small_encoder().feature_dim) and np.isfinite(features).all()


# -- what a served encoder takes over HTTP: ScoringRequest ------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=60))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=60), inner, max_size=4), max_leaves=20)
PARAMS = (st.none() | st.fixed_dictionaries({}, optional={"return_mu": st.booleans()}) | JSON_VALUES
          | st.fixed_dictionaries({}, optional={"return_mu": JSON_VALUES})
          | st.dictionaries(st.sampled_from(["return_mu", "retrun_mu", "x" * 60]), JSON_VALUES, max_size=2))
MESSAGE_MAX = 800  # a 64-axis shape named twice still fits


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Bodies a client may send: mostly {"inputs": ..., "params": ...} objects whose inputs are
    image batches of any dtype and shape (or any JSON), sometimes other keys, other JSON, bytes
    that are not JSON, and JSON Python's parser refuses."""
    kind = draw(st.sampled_from(["request"] * 6 + ["valid", "json", "bytes", "refused by the parser"]))
    if kind == "valid":
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                 draw(st.sampled_from([1, 3, 4])))
        images = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, shape)
        params = draw(st.none() | st.fixed_dictionaries({}, optional={"return_mu": st.booleans()}))
        return json.dumps({"inputs": images.tolist(), **({} if params is None else {"params": params})}).encode()
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "refused by the parser":
        return draw(st.sampled_from([b"[" * 100_000 + b"]" * 100_000, b'{"inputs": ' + b"7" * 5000 + b"}",
                                     b'{"inputs": [[[[1, 2, 3]]]], "params": {"return_mu": ' + b"[" * 50_000 + b"}"]))
    images = draw(arrays_of_any_kind())
    payload = {draw(st.sampled_from(["inputs", "instances"])):
               images.tolist() if images.dtype.kind in "iubfU" and draw(st.integers(0, 3)) else draw(JSON_VALUES)}
    if draw(st.booleans()):
        payload["params"] = draw(PARAMS)
    if draw(st.integers(0, 5)) == 0:
        payload[draw(st.sampled_from(["inputs", "instances", "dataframe_split", "x" * 100]))] = draw(JSON_VALUES)
    return json.dumps(payload).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=request_bodies())
@example(body=b'{"inputs": [[[[1, 2, 3]]]], "params": {"return_mu": "yes"}}')
@example(body=b'{"inputs": [[[[1, 2, 3]]]], "params": {"retrun_mu": true}}')
@example(body=b'{"inputs": [[]]}')
def test_every_request_body_is_answered_or_refused_in_one_short_line_that_never_quotes_it(body):
    """Any body gets 200 (a checked batch the encoder encodes) or a 4xx RequestError: one line
    of at most MESSAGE_MAX characters in which no 45 characters of the body appear. Never
    another exception (the server's 500): JSON nested 100,000 deep and integers of thousands
    of digits got 500, a bad params value a 3,088-character 400 quoting the pixels, an unknown
    params key 200."""
    try:
        request = ScoringRequest.parse(body, SMALL)
    except RequestError as error:
        message = str(error)
        event(f"refused {error.status}")
        assert 400 <= error.status < 500 and "\n" not in message and len(message) <= MESSAGE_MAX, message
        text = body.decode(errors="replace")
        quoted = [message[i:i + 45] for i in range(len(message) - 44) if message[i:i + 45] in text]
        assert not quoted, f"the message quotes the request: {quoted[0]!r}"
        return
    event("answered")
    payload = json.loads(body)
    assert set(payload) <= {"inputs", "instances", "params"}
    assert set(payload.get("params") or {}) <= {"return_mu"}
    assert request.return_mu is bool((payload.get("params") or {}).get("return_mu"))
    assert request.images.dtype == np.uint8 and accepted_by_contract(request.images, SMALL)
    features = small_encoder().encode(request.images, return_mu=request.return_mu)
    assert (features[REPRESENTATION] if request.return_mu else features).shape[0] == len(request.images)


def test_a_refusal_crosses_the_parsing_processes_pipe_with_its_status():
    import pickle

    refused = pickle.loads(pickle.dumps(RequestError("busy", 503, "TEMPORARILY_UNAVAILABLE")))
    assert (str(refused), refused.status, refused.code) == ("busy", 503, "TEMPORARILY_UNAVAILABLE")


@pytest.mark.parametrize(("mean", "original_resize"), [(None, None), ((0.4, 0.5, 0.45), 18)])
def test_one_preprocessing_travels_from_the_view_policy_through_the_bundle_to_the_served_model(
        mean, original_resize):
    """The value the views node resolves is the one the bundle stores, the encoder serves and
    the MLflow model's metadata gives back: nothing is renamed or recomputed on the way."""
    import json

    from aavae.evaluation import bundle_preprocessing, make_bundle
    from aavae.views import Preprocessing, ViewPolicy, resolve_preprocessing, split_view_policy

    images = np.random.default_rng(2).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    std = (0.25, 0.2, 0.3) if mean else None
    resolved = resolve_preprocessing(mean, std, original_resize, images)
    view_policy = json.loads(json.dumps({**ViewPolicy().to_dict(), **resolved.to_dict()}))
    _, from_policy = split_view_policy(view_policy, "view_policy.json")
    bundle = make_bundle(model_from_bundle(trained_looking_bundle()), from_policy)
    served = ImageEncoder.from_bundle(bundle, resize="resize").preprocessing
    metadata = json.loads(json.dumps(served.to_dict()))

    assert from_policy == resolved == bundle_preprocessing(bundle)
    assert Preprocessing.from_dict(served.to_dict()) == resolved
    assert ServingPreprocessing.from_dict(metadata) == served
    assert (served.image_size, served.resize, served.original_resize) == (16, "resize", original_resize)
