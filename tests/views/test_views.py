"""Batched views against torchvision: same parameter distributions, same pixel math."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import aavae.views.augment as views_module
from aavae.views import (
    Preprocessing,
    ViewParams,
    ViewPolicy,
    apply_view_params,
    channel_stats,
    channel_tensors,
    make_views,
    normalize,
    original_view,
    sample_view_params,
    split_view_policy,
    to_float,
)
from aavae.views.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, adjust_hue

CIFAR10_POLICY = ViewPolicy(crop_scale=(0.08, 1.0), flip_p=0.5)  # conf/cifar10's, the paper's
STL10_POLICY = ViewPolicy(crop_scale=(0.08, 1.0), flip_p=0.5, jitter_strength=1.0, blur_p=0.5)
DRAWS = 4000


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 N x 3 x H x W with some gray and saturated pixels (the edge cases of HSV)."""
    images = torch.randint(
        0, 256, (n, 3, height, width), dtype=torch.uint8, generator=generator(seed)
    )
    images[:, :, 0, :] = images[:, :1, 0, :]  # a gray row: r = g = b
    images[:, :, 1, :4] = 255
    images[:, :, 2, :4] = 0
    return images


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def assert_same_distribution(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Fail when a two-sample KS test rejects equality at the 0.1 % level."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:  # asymptotic critical value of the KS statistic for alpha = 0.001
        n, m = len(ours), len(reference)
        statistic, limit = ks_statistic(ours, reference), 1.95 * math.sqrt((n + m) / (n * m))
        assert statistic < limit, f"{what}: KS statistic {statistic:.4f} >= {limit:.4f}"
    else:
        result = ks_2samp(ours, reference)
        assert result.pvalue > 1e-3, (
            f"{what}: KS statistic {result.statistic:.4f}, p = {result.pvalue:.2g}"
        )


def assert_rate(mask: torch.Tensor, p: float, what: str) -> None:
    n = len(mask)
    rate = mask.float().mean().item()
    tolerance = 5 * math.sqrt(max(p * (1 - p), 1e-12) / n)  # five binomial standard errors
    assert abs(rate - p) <= tolerance, f"{what}: rate {rate:.4f}, expected {p} +- {tolerance:.4f}"


def torchvision_crop_boxes(height: int, width: int, policy: ViewPolicy, n: int) -> np.ndarray:
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    scale, ratio = list(policy.crop_scale), list(policy.crop_ratio)
    return np.array([v2.RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)])


def identity_params(n: int, height: int, width: int) -> ViewParams:
    return ViewParams(
        crop_boxes=torch.tensor([[0, 0, height, width]] * n),
        flip=torch.zeros(n, dtype=torch.bool),
        jitter=torch.ones(n, dtype=torch.bool),
        jitter_factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]] * n),
        jitter_order=torch.arange(4).repeat(n, 1),
        grayscale=torch.zeros(n, dtype=torch.bool),
        blur=torch.zeros(n, dtype=torch.bool),
        blur_sigma=torch.ones(n),
        image_size=(height, width),
    )


def torchvision_view(
    image: torch.Tensor, params: ViewParams, k: int, policy: ViewPolicy
) -> torch.Tensor:
    """Image k's view built from its drawn parameters with torchvision's functional ops."""
    top, left, height, width = params.crop_boxes[k].tolist()
    view = TF.resized_crop(image, top, left, height, width, list(image.shape[-2:]), antialias=True)
    if params.flip[k]:
        view = TF.horizontal_flip(view)
    if params.jitter[k]:
        ops = {
            BRIGHTNESS: TF.adjust_brightness,
            CONTRAST: TF.adjust_contrast,
            SATURATION: TF.adjust_saturation,
            HUE: TF.adjust_hue,
        }
        for op_id in params.jitter_order[k].tolist():
            view = ops[op_id](view, params.jitter_factors[k, op_id].item())
    if params.grayscale[k]:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if params.blur[k]:
        kernel = policy.blur_kernel_size(image.shape[-1])
        sigma = params.blur_sigma[k].item()
        view = TF.gaussian_blur(view, [kernel, kernel], [sigma, sigma])
    return view


# --- parameter distributions -------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_crop_boxes_follow_torchvision_random_resized_crop(height: int, width: int) -> None:
    policy = ViewPolicy()
    ours = sample_view_params(DRAWS, height, width, policy, generator()).crop_boxes.numpy()
    reference = torchvision_crop_boxes(height, width, policy, DRAWS)

    def area(boxes: np.ndarray) -> np.ndarray:
        return boxes[:, 2] * boxes[:, 3] / (height * width)

    def aspect(boxes: np.ndarray) -> np.ndarray:
        return boxes[:, 3] / boxes[:, 2]

    assert_same_distribution(area(ours), area(reference), "crop area fraction")
    assert_same_distribution(aspect(ours), aspect(reference), "crop aspect ratio")
    assert_same_distribution(ours[:, 0], reference[:, 0], "crop top")
    assert_same_distribution(ours[:, 1], reference[:, 1], "crop left")
    top, left, h, w = ours.T
    assert (h > 0).all() and (w > 0).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()


def test_crop_falls_back_to_the_central_crop_clamped_to_the_ratio_range() -> None:
    # a 10 x 40 image with near-full-area crops of ratio <= 4/3: no try fits, ever
    policy = ViewPolicy(crop_scale=(0.99, 1.0))
    ours = sample_view_params(50, 10, 40, policy, generator()).crop_boxes
    reference = torchvision_crop_boxes(10, 40, policy, 50)
    assert (reference == [0, 13, 10, 13]).all()  # h = 10, w = round(10 * 4/3), centred
    assert (ours.numpy() == reference).all()


def test_jitter_factors_and_order_follow_torchvision_color_jitter() -> None:
    policy = STL10_POLICY
    params = sample_view_params(DRAWS, 32, 32, policy, generator())
    strength = policy.jitter_strength  # built as the paper builds it
    jitter = v2.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    expected_ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    np.testing.assert_allclose(policy.jitter_ranges(), expected_ranges)
    torch.manual_seed(2)
    reference = [jitter.make_params([]) for _ in range(DRAWS)]
    keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    for op_id, key in enumerate(keys):
        drawn = np.array([draw[key] for draw in reference])
        assert_same_distribution(params.jitter_factors[:, op_id].numpy(), drawn, key)

    order = params.jitter_order
    assert (order.sort(dim=1).values == torch.arange(4)).all(), (
        "each order is a permutation of the 4 ops"
    )
    for position in range(4):
        for op_id in range(4):
            assert_rate(order[:, position] == op_id, 0.25, f"op {op_id} at position {position}")


def test_apply_rates_match_the_policy() -> None:
    policy = ViewPolicy(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.3)
    params = sample_view_params(20000, 32, 32, policy, generator())
    assert_rate(params.flip, 0.5, "flip")
    assert_rate(params.jitter, 0.8, "jitter")
    assert_rate(params.grayscale, 0.2, "grayscale")
    assert_rate(params.blur, 0.3, "blur")
    sigma = params.blur_sigma.numpy()
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert_same_distribution(sigma, np.random.default_rng(0).uniform(0.1, 2.0, 20000), "blur sigma")


def test_zero_probabilities_switch_ops_off() -> None:
    policy = ViewPolicy(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    params = sample_view_params(500, 32, 32, policy, generator())
    assert not (
        params.flip.any() or params.jitter.any() or params.grayscale.any() or params.blur.any()
    )


# --- pixels ------------------------------------------------------------------------------------


def test_identity_params_return_the_input() -> None:
    images = random_images(8)
    views = apply_view_params(images, identity_params(8, 32, 32), ViewPolicy(blur_p=0.5))
    assert views.dtype == torch.float32 and views.shape == (8, 3, 32, 32)
    assert torch.allclose(views, images.float() / 255, atol=1 / 255 / 10)


@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.8])
def test_brightness_contrast_saturation_match_torchvision(factor: float) -> None:
    x = random_images(4).float() / 255
    factors = torch.full((4,), factor)
    blend = views_module._adjust_brightness_contrast_or_saturation
    for op, theirs in ((BRIGHTNESS, TF.adjust_brightness), (CONTRAST, TF.adjust_contrast),
                       (SATURATION, TF.adjust_saturation)):
        ours = blend(x, torch.full((4,), op), factors)
        torch.testing.assert_close(ours, theirs(x, factor), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.0, 0.07, 0.25, 0.5])
def test_hue_matches_torchvision(shift: float) -> None:
    x = random_images(4).float() / 255
    torch.testing.assert_close(
        adjust_hue(x, torch.full((4,), shift)), TF.adjust_hue(x, shift), atol=1e-5, rtol=0
    )


def test_per_image_factors_apply_to_their_own_image() -> None:
    x = random_images(3).float() / 255
    shifts = [0.1, -0.3, 0.45]
    ours = adjust_hue(x, torch.tensor(shifts))
    for k, shift in enumerate(shifts):
        torch.testing.assert_close(ours[k], TF.adjust_hue(x[k], shift), atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", [CIFAR10_POLICY, STL10_POLICY], ids=["cifar10", "stl10"])
def test_views_equal_torchvision_ops_with_the_same_parameters(policy: ViewPolicy) -> None:
    images = random_images(48)
    params = sample_view_params(48, 32, 32, policy, generator(3))
    assert params.blur.any() or policy.blur_p == 0
    views = apply_view_params(images, params, policy)
    for k in range(len(images)):
        expected = torchvision_view(images[k].float() / 255, params, k, policy)
        torch.testing.assert_close(views[k], expected, atol=1e-4, rtol=0, msg=f"image {k}")


@pytest.mark.parametrize("policy", [CIFAR10_POLICY, STL10_POLICY], ids=["cifar10", "stl10"])
def test_the_masked_path_of_accelerators_gives_the_views_of_the_indexed_path(
    policy: ViewPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GPUs apply each colour op to the whole batch and keep it where drawn (no host round trip
    # to count the images); CPUs gather the images that drew it. Forced here on the CPU.
    images = random_images(64)
    params = sample_view_params(64, 32, 32, policy, generator(11))
    indexed = apply_view_params(images, params, policy)
    monkeypatch.setattr(views_module, "subset_by_index", lambda device: False)
    masked = apply_view_params(images, params, policy)
    torch.testing.assert_close(masked, indexed, atol=1e-6, rtol=0)
    assert not torch.equal(masked, apply_view_params(images, identity_params(64, 32, 32), policy))


def test_crop_resize_matches_torchvision_on_uint8_and_when_shrinking() -> None:
    images = random_images(6, 40, 40)
    params = sample_view_params(6, 40, 40, ViewPolicy(jitter_p=0, grayscale_p=0), generator(4))
    for out_size in (40, 24):  # 24: the crop may be larger than the output, so antialiasing counts
        views = apply_view_params(images, params, ViewPolicy(), out_size=out_size)
        assert views.shape == (6, 3, out_size, out_size)
        for k in range(len(images)):
            top, left, height, width = params.crop_boxes[k].tolist()
            expected = TF.resized_crop(
                images[k], top, left, height, width, [out_size, out_size], antialias=True
            )
            if params.flip[k]:
                expected = TF.horizontal_flip(expected)
            assert (views[k] - expected.float() / 255).abs().max() <= 1.01 / 255  # uint8 rounding


def test_grayscale_and_blur_match_torchvision() -> None:
    images = random_images(4, 96, 96)
    policy = STL10_POLICY
    assert policy.blur_kernel_size(96) == 9
    params = identity_params(4, 96, 96)
    params.jitter[:] = False
    params.grayscale[:2] = True
    params.blur[1:3] = True
    params.blur_sigma = torch.tensor([0.5, 0.1, 2.0, 1.0])
    views = apply_view_params(images, params, policy)
    for k in range(4):
        torch.testing.assert_close(
            views[k],
            torchvision_view(images[k].float() / 255, params, k, policy),
            atol=1e-5,
            rtol=0,
        )


def test_outputs_stay_in_unit_range_under_extreme_factors() -> None:
    images = random_images(16)
    params = sample_view_params(16, 32, 32, ViewPolicy(), generator())
    params.jitter[:] = True
    params.jitter_factors = torch.tensor([[0.0, 2.0, 2.0, 0.5], [2.0, 0.0, 0.0, -0.5]]).repeat(8, 1)
    views = apply_view_params(images, params, ViewPolicy())
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_a_fixed_seed_reproduces_the_views_and_another_seed_does_not() -> None:
    images = random_images(32)
    first = make_views(images, STL10_POLICY, generator(7))
    again = make_views(images, STL10_POLICY, generator(7))
    other = make_views(images, STL10_POLICY, generator(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_make_views_accepts_a_permuted_nhwc_batch_and_returns_channels_last() -> None:
    images = random_images(16)
    nhwc = images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    views = make_views(nhwc, ViewPolicy(), generator(5))
    assert torch.equal(views, make_views(images, ViewPolicy(), generator(5)))
    assert views.is_contiguous(memory_format=torch.channels_last)
    assert views.dtype == torch.float32 and views.shape == (16, 3, 32, 32)
    assert 0.0 <= views.min() and views.max() <= 1.0


def test_an_empty_batch_gives_no_views() -> None:
    assert make_views(random_images(0), STL10_POLICY, generator()).shape == (0, 3, 32, 32)


# --- input checks, policy, small helpers ----------------------------------------------------------


def test_non_rgb_or_non_uint8_images_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="RGB"):
        make_views(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ViewPolicy(), generator())
    with pytest.raises(ValueError, match="RGB"):  # an unpermuted N x H x W x C batch
        make_views(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), ViewPolicy(), generator())
    with pytest.raises(ValueError, match="uint8"):
        make_views(torch.zeros(2, 3, 8, 8), ViewPolicy(), generator())
    with pytest.raises(ValueError, match="parameters drawn for 3 of 32x32"):
        apply_view_params(random_images(2), identity_params(3, 32, 32), ViewPolicy())
    with pytest.raises(ValueError, match="parameters drawn for 2 of 16x16"):
        apply_view_params(random_images(2), identity_params(2, 16, 16), ViewPolicy())


def test_policy_round_trips_through_json_and_rejects_bad_values() -> None:
    policy = ViewPolicy(jitter_strength=1.0, blur_p=0.5, crop_scale=(0.2, 1.0))
    restored = ViewPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert restored == policy
    assert ViewPolicy().jitter_ranges()[0] == pytest.approx((0.6, 1.4))
    with pytest.raises(ValueError, match=r"jitter: Extra inputs are not permitted"):
        ViewPolicy.from_dict({**policy.to_dict(), "jitter": 0.5})
    with pytest.raises(ValueError, match="flip_p"):
        ViewPolicy(flip_p=1.5)
    with pytest.raises(ValueError, match="flip_p"):
        ViewPolicy(flip_p=True)  # a boolean is not a probability
    with pytest.raises(ValueError, match="jitter_strength"):
        ViewPolicy(jitter_strength=3.0)
    with pytest.raises(ValueError, match="crop_scale"):
        ViewPolicy(crop_scale=(0.5, 0.1))


@pytest.mark.parametrize("key", list(ViewPolicy.model_fields))
def test_a_stored_view_policy_with_a_key_deleted_is_refused_not_trained_with_the_default(key) -> None:
    """A hand-edited view_policy.json missing a field trained silently with the built-in default."""
    stored = json.loads(json.dumps({**ViewPolicy(flip_p=0.5, crop_scale=(0.08, 1.0)).to_dict(),
                                    **Preprocessing((0.1, 0.2, 0.3), (0.3, 0.2, 0.1)).to_dict(), "data_sha256": "ab"}))
    del stored[key]
    with pytest.raises(ValueError, match=rf"^the view policy \(data/test/05_model_input/view_policy.json\) is not a "
                       rf"complete, valid record: missing {key}\. Run "):
        split_view_policy(stored, "data/test/05_model_input/view_policy.json")


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(list(ViewPolicy.model_fields)),
       value=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
       | st.lists(st.floats() | st.booleans(), max_size=3))
def test_any_stored_value_of_a_view_policy_gives_a_policy_or_a_one_line_error(key, value) -> None:
    """The stored policy is validated as the views parameters are: strict types and bounds."""
    stored = {**ViewPolicy().to_dict(), key: value}
    try:
        policy = ViewPolicy.from_dict(stored)
    except ValueError as error:
        assert "is not a complete, valid record: " in str(error) and "\n" not in str(error)
        return
    assert type(value) is not bool and policy.to_dict()[key] == value


def test_blur_kernel_is_a_tenth_of_the_image_and_odd() -> None:
    policy = ViewPolicy()
    assert [policy.blur_kernel_size(size) for size in (32, 64, 96, 224)] == [3, 7, 9, 23]


def test_to_float_and_normalize() -> None:
    images = random_images(2)
    x = to_float(images)
    assert x.dtype == torch.float32 and torch.equal(x, images.float() / 255)
    y = normalize(x, *channel_tensors((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), "cpu"))
    torch.testing.assert_close(y[:, 1], (x[:, 1] - 0.4) / 0.25)


def test_channel_stats_match_numpy_and_refuse_float_images() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=7)
    as_float = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, as_float.mean(0), atol=1e-9)
    np.testing.assert_allclose(std, as_float.std(0), atol=1e-9)
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(images.astype(np.float32))


@pytest.mark.parametrize(("side", "resized"), [(96, 105), (32, 35), (16, 16)])
def test_original_view_is_torchvisions_resize_then_centre_crop(side: int, resized: int) -> None:
    # The paper's STL-10 original: Resize(int(96 * 1.1)) then CenterCrop(96).
    images = torch.randint(0, 256, (3, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = v2.CenterCrop(side)(v2.Resize(resized, antialias=True)(images.float() / 255))
    torch.testing.assert_close(original_view(images, resized), expected, atol=1e-5, rtol=0)
    assert torch.equal(original_view(images, None), to_float(images))
    with pytest.raises(ValueError, match="must be at least the image size"):
        original_view(images, side - 1)


# -- the preprocessing of originals as one value ------------------------------------------------
finite = st.floats(-10, 10, allow_nan=False)
positive = st.floats(1e-3, 10, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(mean=st.tuples(finite, finite, finite), std=st.tuples(positive, positive, positive),
       original_resize=st.none() | st.integers(1, 512))
def test_preprocessing_round_trips_through_json(mean, std, original_resize) -> None:
    preprocessing = Preprocessing(mean, std, original_resize)
    stored = json.loads(json.dumps(preprocessing.to_dict()))
    assert Preprocessing.from_dict(stored) == preprocessing
    assert Preprocessing(list(mean), list(std), np.int64(original_resize) if original_resize else None) == preprocessing


@pytest.mark.parametrize(("values", "named"), [
    ({"mean": [0.5, 0.5], "std": [0.2] * 3}, "mean must be three numbers"),
    ({"mean": "rgb", "std": [0.2] * 3}, "mean must be three numbers"),
    ({"mean": [0.5, None, 0.5], "std": [0.2] * 3}, "mean must be three numbers"),
    ({"mean": [0.5, math.nan, 0.5], "std": [0.2] * 3}, "mean must be finite"),
    ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "std must be positive"),
    ({"mean": [0.5] * 3, "std": [0.2, -1, 0.2]}, "std must be positive"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "original_resize": 0}, "original_resize must be a positive integer"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "original_resize": 10.5}, "original_resize must be a positive integer"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "original_resize": True}, "original_resize must be a positive integer"),
    ({"std": [0.2] * 3}, "has no mean"),
    ({"mean": [0.5] * 3, "std": None}, "has no std"),
])
def test_preprocessing_refuses_what_cannot_normalise_naming_where_it_was_read(values, named) -> None:
    with pytest.raises(ValueError, match=named) as refused:
        Preprocessing.from_dict(values, source="model bundle X")
    assert str(refused.value).startswith("model bundle X")


def test_a_preprocessing_stored_before_the_zoom_existed_reads_without_one() -> None:
    assert Preprocessing.from_dict({"mean": [0.5] * 3, "std": [0.2] * 3}) == Preprocessing([0.5] * 3, [0.2] * 3)


@pytest.mark.parametrize("original_resize", [None, 35])
def test_preprocessing_applies_the_zoom_to_originals_and_only_normalises_views(original_resize) -> None:
    images = random_images(4)
    preprocessing = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), original_resize)
    mean, std = channel_tensors(preprocessing.mean, preprocessing.std, "cpu")
    expected = normalize(original_view(images, original_resize), mean, std)
    torch.testing.assert_close(preprocessing.apply(images), expected)
    torch.testing.assert_close(preprocessing.apply_to_views(images), normalize(to_float(images), mean, std))


def test_a_resolved_view_policy_splits_into_the_policy_and_its_preprocessing() -> None:
    policy, preprocessing = ViewPolicy(flip_p=0.5), Preprocessing((0.1, 0.2, 0.3), (0.3, 0.2, 0.1), 40)
    stored = json.loads(json.dumps({**policy.to_dict(), **preprocessing.to_dict(), "data_sha256": "ab"}))
    assert split_view_policy(stored, "view_policy.json") == (policy, preprocessing)
    with pytest.raises(ValueError, match=r"view_policy.json.*has no mean or std"):
        split_view_policy(policy.to_dict(), "view_policy.json")


@settings(max_examples=120, deadline=None)
@given(dtype=st.sampled_from([torch.uint8, torch.float32, torch.int64, torch.bool]),
       shape=st.lists(st.integers(1, 24), min_size=2, max_size=5),
       channels_at=st.integers(0, 4), channels=st.integers(1, 4),
       original_resize=st.none() | st.integers(1, 48))
def test_preprocessing_of_any_tensor_is_the_networks_input_or_a_named_refusal(
        dtype, shape, channels_at, channels, original_resize) -> None:
    """Whatever reaches the preprocessing (a float batch, NHWC, grey, one image, a zoom smaller
    than the image) gives float32 N x 3 x H x W finite values or a ValueError saying what it
    expects: never a shape error from deep inside torch."""
    shape = list(shape)
    shape.insert(min(channels_at, len(shape)), channels)
    images = torch.zeros(shape, dtype=dtype)
    preprocessing = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), original_resize)
    try:
        x = preprocessing.apply(images)
    except ValueError as error:
        assert any(word in str(error) for word in ("uint8", "RGB", "at least the image size")), str(error)
        return
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
    assert x.dtype == torch.float32 and x.shape == images.shape and torch.isfinite(x).all()
