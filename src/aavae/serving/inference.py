"""A trained encoder ready for new images: bring them to the training size, normalise, encode.

:class:`ImageEncoder` is the one owner of "what the trained model does to an image of any
size", shared by the embed pipeline and the MLflow model (:mod:`aavae.serving.mlflow_model`), so a
served model, an embedded folder and the features pipeline give the same numbers:

* images are brought to the training size exactly as ingest brings an image folder's files
  there (:func:`aavae.data.imagefolder.fit_image`: shorter side scaled and centre-cropped,
  or both sides scaled; images already at that size are left untouched, as ingest leaves
  them);
* the features are :func:`aavae.evaluation.extract_features` of the bundle's encoder with
  the bundle's mean and std, the same call the features pipeline makes;
* the network comes from :func:`aavae.evaluation.model_from_bundle`, the one function that
  reads the bundle format.

:func:`check_image_batch` is the one owner of "what a served encoder accepts" (the
contract, and the :class:`InputLimits` checked before any image is decoded): the MLflow
model calls it on every path, in-process ``pyfunc`` and ``mlflow models serve`` alike.

``precision="bf16-mixed"`` is the fast path for embedding large folders on a CPU with bf16
matrix units: batch norm folded into the convolutions, bf16 autocast, about 2.5x faster on
the development machine's AMX, features within about 1% of the fp32 ones. The default,
``32-true``, is the features pipeline's exact call.

Plain PyTorch/NumPy/Pillow: no Kedro, no MLflow.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from aavae.common.hardware import choose_precision
from aavae.data.fit import RESIZE_POLICIES, fit_image
from aavae.evaluation import bundle_preprocessing, extract_features, model_from_bundle
from aavae.models import AAVAENet
from aavae.views import Preprocessing

logger = logging.getLogger(__name__)

#: The keys :meth:`ImageEncoder.encode` returns with ``return_mu=True``.
REPRESENTATION, MU = "representation", "mu"
PRECISIONS = ("32-true", "bf16-mixed")
#: Channel counts an image may have: grey, RGB, RGBA.
CHANNELS = (1, 3, 4)
#: What a served encoder takes, in the words of every refusal.
CONTRACT = "uint8 images, N x H x W x C with C = 1, 3 or 4 (over JSON: integers 0-255)"


class ImageBatchError(ValueError):
    """A batch a served encoder refuses. The message names what was sent (its type, dtype and
    shape, never its pixels: a request may hold megabytes of them) and what is expected."""


@dataclass(frozen=True)
class InputLimits:
    """Bounds on one call of a served encoder, checked before any image is decoded or resized.

    Together they bound the pixels one request makes the model touch
    (``max_batch_size x max_image_side^2 x 4`` bytes); set at registration from
    ``registry.max_image_side`` and ``registry.max_batch_size``.
    """

    max_image_side: int
    max_batch_size: int

    def __post_init__(self) -> None:
        for name in ("max_image_side", "max_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_image_batch(images: object, limits: InputLimits) -> np.ndarray:
    """The batch a served encoder accepts, as a uint8 ``N x H x W x C`` array, or
    :class:`ImageBatchError` naming what was sent and what is expected.

    Accepted: uint8 arrays, and integer arrays or nested lists whose values all lie in
    0-255 (JSON has no uint8, so a request's pixels arrive as integers). Refused, each with
    its own remedy: floats (whole-number floats too: they are often images scaled to [0, 1]
    and truncated, which would encode a black image), booleans, text or other objects, an
    empty batch, images of different sizes, other axis counts, channel counts other than 1,
    3 or 4, and batches beyond ``limits``. Every check before the value range costs O(1):
    nothing proportional to the pixels runs for a batch refused on its shape.
    """
    expected = (f"The encoder takes {CONTRACT}, at most {limits.max_batch_size} images of "
                f"at most {limits.max_image_side} pixels a side")
    _refuse_oversize_sequence(images, limits, expected)
    try:
        array = np.asarray(images)
    except (ValueError, TypeError, OverflowError) as error:
        raise ImageBatchError(f"{expected}; got {_ragged_description(images, error)}.") from None
    sent = _description(images, array)
    problems = _shape_and_type_problems(array, limits)
    if problems:
        raise ImageBatchError(f"{expected}; got {sent}: {'; '.join(problems)}.")
    if array.dtype != np.uint8:  # integers: the one check that reads every value
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageBatchError(
                f"{expected}; got {sent} with values from {low} to {high}: pixels are 0-255 "
                "(rescale the images to 0-255 and send them as uint8)."
            )
        array = array.astype(np.uint8)
    return array


def _refuse_oversize_sequence(images: object, limits: InputLimits, expected: str) -> None:
    """A list too long, or whose first image is too large, is refused before numpy copies it."""
    if not isinstance(images, (list, tuple)):
        return
    if len(images) > limits.max_batch_size:
        raise ImageBatchError(
            f"{expected}; got a {type(images).__name__} of {len(images)} items: "
            f"{_too_many(len(images), limits)}."
        )
    first: object = images[0] if images else None
    sides: list[int] = []
    while len(sides) < 2:
        if isinstance(first, np.ndarray):
            sides.extend(first.shape[: 2 - len(sides)])
            break
        if not isinstance(first, (list, tuple)) or not first:
            break
        sides.append(len(first))
        first = first[0]
    if any(side > limits.max_image_side for side in sides):
        raise ImageBatchError(
            f"{expected}; got a {type(images).__name__} whose first image has "
            f"{' x '.join(map(str, sides))} pixels: {_too_large(limits)}."
        )


def _shape_and_type_problems(array: np.ndarray, limits: InputLimits) -> list[str]:
    """What is wrong with the batch's dtype and shape; O(1), reads no pixel."""
    if array.ndim >= 1 and array.shape[0] == 0:
        return ["an empty batch: send at least one image"]
    problems = []
    kind = array.dtype.kind
    if kind == "f":
        problems.append(
            "floats, which the model does not round or scale (a float image is often in "
            "[0, 1]): send uint8 pixels, e.g. (images * 255).round().astype(numpy.uint8) "
            "for images in [0, 1]"
        )
    elif kind == "b":
        problems.append("booleans: send uint8 pixels (0-255)")
    elif kind in "US":
        problems.append("text: send numbers, uint8 pixels (0-255)")
    elif kind not in "iu":
        problems.append("values that are not all integers (null, objects, complex numbers, "
                        "integers beyond 64 bits): send uint8 pixels (0-255)")
    if array.ndim != 4:
        problems.append(_axes_hint(array.shape))
    else:
        batch, height, width, channels = array.shape
        if channels not in CHANNELS:
            hint = (", or channels first? send images.transpose(0, 2, 3, 1)"
                    if height in CHANNELS else "")
            problems.append(f"{channels} channels, where C must be 1 (grey), 3 (RGB) or "
                            f"4 (RGBA){hint}")
        if batch > limits.max_batch_size:
            problems.append(_too_many(batch, limits))
        if height == 0 or width == 0:
            problems.append("images without pixels")
        elif max(height, width) > limits.max_image_side:
            problems.append(f"images of {height} x {width} pixels: {_too_large(limits)}")
    return problems


def _axes_hint(shape: tuple[int, ...]) -> str:
    if len(shape) == 0:
        return "a single value, not a batch of images"
    if len(shape) == 2:
        return "2 axes: for one grey H x W image send image[None, :, :, None]"
    if len(shape) == 3:
        return ("3 axes: for one H x W x C image send image[None]; for grey N x H x W "
                "images add a channel axis, images[..., None]")
    return f"{len(shape)} axes, where a batch has 4 (N x H x W x C)"


def _too_many(count: int, limits: InputLimits) -> str:
    return (f"{count} images, over this model's max_batch_size of {limits.max_batch_size}: "
            "split them into several requests")


def _too_large(limits: InputLimits) -> str:
    return (f"a side over this model's max_image_side of {limits.max_image_side}: downscale "
            "the images first (the model brings every image to its small training size anyway)")


def _description(images: object, array: np.ndarray) -> str:
    what = "an array" if isinstance(images, np.ndarray) else f"a {type(images).__name__}"
    if array.size == 0 and not isinstance(images, np.ndarray):
        return f"{what} with shape {array.shape}"  # numpy's dtype of no values says nothing
    return f"{what} of {array.dtype} with shape {array.shape}"


def _ragged_description(images: object, error: Exception) -> str:
    """Numpy's words for a ragged nested list name the shape it found, not the values."""
    text = str(error)
    found = text[text.find("The detected shape"):] if "The detected shape" in text else ""
    return (f"a {type(images).__name__} that is not one N x H x W x C block: images of "
            f"different sizes, or rows of different lengths ({found or type(error).__name__}); "
            "send images of one size per request (resize them first, or send them one by one)")


@dataclass(frozen=True, kw_only=True)
class ServingPreprocessing(Preprocessing):
    """How any image becomes the network's input: fitted to ``image_size`` pixels a side by the
    ``resize`` policy of its training run, then the model's :class:`aavae.views.Preprocessing`
    (normalisation and the recipe's zoom)."""

    image_size: int
    resize: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(
                f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}"
            )

    @classmethod
    def fitting(cls, preprocessing: Preprocessing, image_size: int, resize: str) -> ServingPreprocessing:
        core = {f.name: getattr(preprocessing, f.name) for f in fields(Preprocessing)}
        return cls(**core, image_size=int(image_size), resize=resize)


class ImageEncoder:
    """The trained encoder of a model bundle, with the preprocessing it was trained with."""

    def __init__(
        self, net: AAVAENet, preprocessing: ServingPreprocessing, identity: str = "a model bundle",
        precision: str = "32-true",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.precision = precision  # what encode() uses unless told otherwise
        self.identity = identity  # which model this is, for messages and embedding indexes
        self._with_mu = _RepresentationAndMu(self.net)
        self._fused: nn.Module | None = None

    @classmethod
    def from_bundle(
        cls, bundle: Mapping[str, Any], resize: str = "resize_crop", precision: str = "32-true"
    ) -> ImageEncoder:
        """Rebuild the bundle's network; ``resize`` is ``dataset.resize`` of its training run."""
        net = model_from_bundle(bundle)
        preprocessing = ServingPreprocessing.fitting(bundle_preprocessing(bundle), net.spec.input_size, resize)
        run_id = bundle.get("mlflow_run_id")
        where = f"trained in MLflow run {run_id}" if run_id else str(bundle.get("checkpoint") or "")
        return cls(net, preprocessing, f"model bundle {where}".strip(), precision)

    @property
    def feature_dim(self) -> int:
        return int(self.net.spec.feature_dim)

    @property
    def latent_dim(self) -> int:
        return int(self.net.spec.latent_dim)

    def fit_images(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images (``N x H x W x C`` or a list of ``H x W x C``/``H x W``, any size; C of
        1, 3 or 4) -> uint8 ``N x S x S x 3`` at the training size ``S``, as ingest does."""
        side = self.preprocessing.image_size
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (side, side, 3):
            _check_uint8(images, "images")
            return images
        fitted = np.empty((len(images), side, side, 3), np.uint8)
        for index, image in enumerate(images):
            fitted[index] = self.fit_image(image, f"image {index}")
        return fitted

    def fit_image(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """One uint8 ``H x W x C`` (or ``H x W``) image -> uint8 ``S x S x 3``."""
        image = np.asarray(image)
        _check_uint8(image, name)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(
                f"{name} must be uint8 H x W (grey) or H x W x C with C = 1, 3 or 4, "
                f"got shape {image.shape}"
            )
        side = self.preprocessing.image_size
        if image.shape[:2] == (side, side) and image.ndim == 3 and image.shape[2] == 3:
            return image
        pil = Image.fromarray(np.ascontiguousarray(image))
        return fit_image(pil, (side, side), self.preprocessing.resize)  # type: ignore[arg-type]

    def encode(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        *,
        return_mu: bool = False,
        batch_size: int = 256,
        precision: str | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Representations ``(N, feature_dim)`` float32 of uint8 images of any size.

        With ``return_mu`` a dict of the representation and ``mu``, the mean of q(z | x)
        ``(N, latent_dim)`` (the deterministic latent for an ``ae`` model), from one pass.
        ``precision="bf16-mixed"`` takes the fast path (see the module docstring); None: the
        encoder's own.
        """
        precision = precision or self.precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        fitted = self.fit_images(images)
        mean, std = self.preprocessing.mean, self.preprocessing.std
        fast = precision == "bf16-mixed"
        if not return_mu:
            encoder = self._fused_encoder() if fast else self.net.encoder
            return extract_features(encoder, fitted, mean, std, batch_size=batch_size, autocast_bf16=fast,
                                    original_resize=self.preprocessing.original_resize)
        both = extract_features(self._with_mu, fitted, mean, std, batch_size=batch_size, autocast_bf16=fast,
                                original_resize=self.preprocessing.original_resize)
        return {REPRESENTATION: both[:, : self.feature_dim], MU: both[:, self.feature_dim :]}

    def _fused_encoder(self) -> nn.Module:
        """The encoder with each batch norm folded into the convolution before it (eval mode
        only): one pass over memory less per layer. Falls back to the encoder as it is."""
        if self._fused is None:
            from torch.fx.experimental.optimization import fuse

            try:
                self._fused = fuse(copy.deepcopy(self.net.encoder).eval())
            except Exception as error:  # noqa: BLE001 - an untraceable encoder still works unfused
                logger.info("Encoding without folding batch norm (%s)", error)
                self._fused = self.net.encoder
        return self._fused


def resolve_precision(requested: str, device: torch.device | None = None) -> str:
    """``auto`` for a network on ``device`` (None: the CPU), as :mod:`aavae.common.hardware` decides."""
    return choose_precision(requested, device if device is not None else "cpu")


class _RepresentationAndMu(nn.Module):
    """Encoder output and the latent mean side by side, so one pass gives both."""

    def __init__(self, net: AAVAENet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        features = self.net.encoder(x)
        return torch.cat([features.flatten(1), self.net.latent_mean(features).flatten(1)], dim=1)


def _check_uint8(image: np.ndarray, name: str) -> None:
    if image.dtype != np.uint8:
        raise ValueError(
            f"{name} must hold uint8 pixels (0-255), got {image.dtype}; decode images to "
            "uint8 (e.g. numpy.asarray(PIL.Image.open(path).convert('RGB')))"
        )
