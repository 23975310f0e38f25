"""A trained encoder ready for new images: bring them to the training size, normalise, encode.

:class:`ImageEncoder` is the one owner of "what the trained model does to an image of any
size", shared by the embed pipeline and the MLflow model (:mod:`aavae.mlflow_model`), so a
served model, an embedded folder and the features pipeline give the same numbers:

* images are brought to the training size exactly as ingest brings an image folder's files
  there (:func:`aavae.data.imagefolder.fit_image`: shorter side scaled and centre-cropped,
  or both sides scaled; images already at that size are left untouched, as ingest leaves
  them);
* the features are :func:`aavae.evaluation.extract_features` of the bundle's encoder with
  the bundle's mean and std, the same call the features pipeline makes;
* the network comes from :func:`aavae.evaluation.model_from_bundle`, the one function that
  reads the bundle format.

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from aavae.data.imagefolder import RESIZE_POLICIES, fit_image
from aavae.evaluation import extract_features, model_from_bundle
from aavae.models import AAVAENet

logger = logging.getLogger(__name__)

#: The keys :meth:`ImageEncoder.encode` returns with ``return_mu=True``.
REPRESENTATION, MU = "representation", "mu"
PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input: its side, the resize policy, mean and std."""

    image_size: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    original_resize: int | None = None  # the paper's STL-10 zoom of originals (105 for 96)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(
                f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


class ImageEncoder:
    """The trained encoder of a model bundle, with the preprocessing it was trained with."""

    def __init__(
        self, net: AAVAENet, preprocessing: Preprocessing, identity: str = "a model bundle",
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
        norm = bundle["normalization"]
        preprocessing = Preprocessing(
            image_size=int(net.spec.input_size), resize=resize,
            mean=tuple(float(v) for v in norm["mean"]), std=tuple(float(v) for v in norm["std"]),
            original_resize=norm.get("original_resize"),
        )
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
    """``auto``: bf16-mixed on a CUDA ``device`` with bf16, or, on the CPU, where it has bf16
    matrix units (as pretraining decides); else 32-true. Other values are returned as they are."""
    if requested != "auto":
        return requested
    if device is not None and device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    from aavae.training.engine import cpu_has_fast_bf16  # the one owner of that check

    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


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
