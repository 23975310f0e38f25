"""A trained encoder ready for new images: bring them to the training size, normalise, encode.

:class:`ImageEncoder` is the one owner of what the trained model does to an image of any size,
shared by the embed pipeline and the MLflow model, so a served model, an embedded folder and the
features pipeline give the same numbers: images are fitted as ingest fits an image folder's
(:func:`aavae.data.fit.fit_image`), and the features are the features pipeline's call
(:func:`aavae.evaluation.extract_features`) on the network :func:`aavae.evaluation.model_from_bundle`
rebuilds. What a served encoder accepts is :mod:`aavae.serving.contract`'s.

``precision="bf16-mixed"`` is the fast path for embedding large folders on a CPU with bf16
matrix units: batch norm folded into the convolutions, bf16 autocast, about 2.5x faster on
the development machine's AMX, features within about 1% of the fp32 ones.

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

from aavae.data.fit import RESIZE_POLICIES, fit_image
from aavae.evaluation import bundle_preprocessing, extract_features, model_from_bundle
from aavae.models import AAVAENet
from aavae.views import Preprocessing

logger = logging.getLogger(__name__)

#: The keys :meth:`ImageEncoder.encode` returns with ``return_mu=True``.
REPRESENTATION, MU = "representation", "mu"
PRECISIONS = ("32-true", "bf16-mixed")
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
        self.precision = precision
        self.identity = identity  # which model this is, for messages and embedding indexes
        self._with_mu = _RepresentationAndMu(self.net)
        self._fused: nn.Module | None = None

    @classmethod
    def from_bundle(
        cls, bundle: Mapping[str, Any], resize: str = "resize_crop", precision: str = "32-true"
    ) -> ImageEncoder:
        """Rebuild the bundle's network; ``resize`` is ``dataset.resize`` of its training run."""
        net = model_from_bundle(bundle)
        preprocessing = ServingPreprocessing(**asdict(bundle_preprocessing(bundle)), image_size=int(net.spec.input_size),
                                             resize=resize)
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
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Representations ``(N, feature_dim)`` float32 of uint8 images of any size; with
        ``return_mu`` a dict of them and ``mu``, the mean of q(z | x) ``(N, latent_dim)`` (the
        deterministic latent for an ``ae`` model), from one pass."""
        fitted = self.fit_images(images)
        mean, std = self.preprocessing.mean, self.preprocessing.std
        fast = self.precision == "bf16-mixed"
        model = self._with_mu if return_mu else self._fused_encoder() if fast else self.net.encoder
        features = extract_features(model, fitted, mean, std, batch_size=batch_size, autocast_bf16=fast,
                                    original_resize=self.preprocessing.original_resize)
        if not return_mu:
            return features
        return {REPRESENTATION: features[:, : self.feature_dim], MU: features[:, self.feature_dim :]}

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
