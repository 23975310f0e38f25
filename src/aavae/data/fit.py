"""The fit-to-size rule: how any image becomes the square RGB uint8 image a model takes.

Ingest applies it to an image folder's files, the features pipeline to another dataset's
images (a transfer evaluation), and the served model to what a client sends, so all three
bring an image to a model the same way: the shorter side resized and the centre cropped
(``resize_crop``), or the image stretched to the square (``resize``). An image is first turned
upright as its EXIF orientation says (a phone photo is stored on its side with Orientation 6).
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
    """Bring an opened, not yet decoded image to ``size`` (width, height) as RGB uint8, upright.

    Raises :class:`DatasetError` for an image mode that has no conversion to RGB.
    """
    width, height = size
    turned = _quarter_turned(image)
    upright_width, upright_height = upright_size(image)
    crop = policy == "resize_crop"
    scale = max(width / upright_width, height / upright_height)
    needed = (math.ceil(upright_width * scale), math.ceil(upright_height * scale)) if crop else size
    # A JPEG then decodes at 1/2, 1/4 or 1/8 scale if that still covers `needed`: far faster.
    image.draft("RGB", needed[::-1] if turned else needed)
    ImageOps.exif_transpose(image, in_place=True)  # decodes, then turns upright
    if image.size == size:
        return np.asarray(to_rgb(image))
    box = centre_box(image.size, size) if crop else None
    return np.asarray(to_rgb(image).resize(size, Image.Resampling.BILINEAR, box=box))


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as it is meant to be seen: its EXIF orientation applied."""
    return (image.height, image.width) if _quarter_turned(image) else image.size


def _quarter_turned(image: Image.Image) -> bool:
    return image.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS


def fit_images(images: np.ndarray, side: int, policy: ResizePolicy) -> np.ndarray:
    """uint8 ``N x H x W x C`` images -> uint8 ``N x side x side x 3``, each brought there as
    :func:`fit_image` brings a file (what a model trained at ``side`` expects of other images)."""
    fitted = np.empty((len(images), side, side, 3), np.uint8)
    for index in range(len(images)):
        fitted[index] = fit_image(Image.fromarray(np.asarray(images[index])), (side, side), policy)
    return fitted


def centre_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[float, ...]:
    """The centred region of ``image_size`` with the aspect of ``size`` (both width, height).

    Which side is kept whole is decided in integers, and that side is exactly the image's:
    computed as ``width / (width / image_width)`` in floats it can come out a hair larger
    (49 / (16 / 49) > 49), and Pillow refuses a box that starts at -1e-15. The other side
    is at most the image's (rounding is monotonic), and the box is clamped to the image.
    """
    (image_width, image_height), (width, height) = image_size, size
    if width * image_height >= height * image_width:  # relatively wider output: full width
        crop_height = image_width * height / width
        top = max(0.0, (image_height - crop_height) / 2)
        return (0.0, top, float(image_width), min(float(image_height), top + crop_height))
    crop_width = image_height * width / height
    left = max(0.0, (image_width - crop_width) / 2)
    return (left, 0.0, min(float(image_width), left + crop_width), float(image_height))


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
