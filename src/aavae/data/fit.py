"""The fit-to-size rule: how any image becomes the square RGB uint8 image a model takes.

One rule for ingest, a transfer evaluation's images and what a client sends the served model:
turned upright as its EXIF orientation says (a phone photo is stored on its side), then the
shorter side resized and the centre cropped (``resize_crop``) or stretched (``resize``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps

from aavae.data.errors import DatasetError

ResizePolicy = Literal["resize_crop", "resize"]
RESIZE_POLICIES = ("resize_crop", "resize")
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations stored a quarter turn off: width and height swap


def fit_image(image: Image.Image, size: tuple[int, int], policy: ResizePolicy) -> np.ndarray:
    """An opened, not yet decoded image at ``size`` (width, height) as upright RGB uint8; a
    :class:`DatasetError` for a mode with no conversion to RGB."""
    width, height = size
    turned = _quarter_turned(image)
    upright_width, upright_height = upright_size(image)
    crop = policy == "resize_crop"
    scale = max(width / upright_width, height / upright_height)
    needed = (math.ceil(upright_width * scale), math.ceil(upright_height * scale)) if crop else size
    # A JPEG then decodes at 1/2, 1/4 or 1/8 scale if that still covers `needed`: far faster.
    image.draft("RGB", needed[::-1] if turned else needed)
    ImageOps.exif_transpose(image, in_place=True)  # decodes, then turns upright
    rgb = to_rgb(image)
    if rgb.size == size:
        return np.asarray(rgb)
    bilinear = Image.Resampling.BILINEAR
    return np.asarray(ImageOps.fit(rgb, size, bilinear) if crop else rgb.resize(size, bilinear))


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as it is meant to be seen: its EXIF orientation applied."""
    return (image.height, image.width) if _quarter_turned(image) else image.size


def _quarter_turned(image: Image.Image) -> bool:
    return image.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS


def fit_images(images: np.ndarray, side: int, policy: ResizePolicy) -> np.ndarray:
    """Each image brought to ``side`` as :func:`fit_image` brings a file (uint8, RGB)."""
    fitted = np.empty((len(images), side, side, 3), np.uint8)
    for index in range(len(images)):
        fitted[index] = fit_image(Image.fromarray(np.asarray(images[index])), (side, side), policy)
    return fitted


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):  # 16-bit grey: keep the high byte (convert would clip)
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    try:
        return image.convert("RGB")  # grey is replicated, alpha dropped, palettes expanded
    except ValueError as exc:  # e.g. "conversion from La to RGB not supported"
        raise DatasetError(
            f"image mode {image.mode!r} has no conversion to RGB ({exc}): save the image as "
            "RGB, RGBA, grey or palette"
        ) from exc
