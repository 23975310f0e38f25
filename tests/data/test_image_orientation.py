"""Photos are read upright: every decoder of aavae.data applies the EXIF orientation.

A phone stores a photo taken upright on its side and says so in EXIF (Orientation 6); each of
the eight orientations is written here as a file stored the way a camera would store it, and
every reader (ingest at the images' own size and resized, embed's batches and single files)
must give the upright image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from aavae.data.fit import fit_image
from aavae.data.folder_images import iter_image_batches, read_image
from aavae.data.imagefolder import read_imagefolder

#: How each EXIF orientation is stored: the transposition that, undone, shows the image upright.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # shown after a quarter turn clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
QUADRANTS = np.array([[[220, 30, 30], [30, 200, 30]], [[30, 30, 220], [230, 230, 40]]], np.uint8)


def upright(width: int, height: int) -> np.ndarray:
    """An image whose four quadrants have four colours: any turn or flip shows."""
    rows = np.arange(height) * 2 // height
    columns = np.arange(width) * 2 // width
    return QUADRANTS[rows[:, None], columns[None, :]]


def stored(image: np.ndarray, orientation: int, image_format: str = "PNG", **options) -> bytes:
    """``image`` as a camera stores it with ``orientation`` in its EXIF."""
    pil = Image.fromarray(image)
    if STORED_AS[orientation] is not None:
        pil = pil.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = io.BytesIO()
    pil.save(data, format=image_format, exif=exif, **options)
    return data.getvalue()


def image_folder(root: Path, files: dict[str, bytes]) -> Path:
    for split in ("train", "test"):
        for name, data in files.items():
            (root / split / "c").mkdir(parents=True, exist_ok=True)
            (root / split / "c" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_every_reader_turns_a_photo_upright(tmp_path, orientation):
    picture = upright(8, 12)
    folder = image_folder(tmp_path / "tree", {"photo.png": stored(picture, orientation)})
    reference = image_folder(tmp_path / "reference", {"photo.png": stored(picture, 1)})

    kept = read_imagefolder(folder, workers=1).splits["train"].images[0]
    np.testing.assert_array_equal(kept, picture)  # at its own size: exactly the upright image
    resized = read_imagefolder(folder, image_size=4, workers=1).splits["train"].images[0]
    np.testing.assert_array_equal(resized, read_imagefolder(reference, image_size=4, workers=1)
                                  .splits["train"].images[0])
    (batch,) = iter_image_batches(folder / "train", 4)
    np.testing.assert_array_equal(batch.images[0], resized)
    np.testing.assert_array_equal(read_image(folder / "train" / "c" / "photo.png", 4), resized)


def test_a_sideways_photo_sets_the_size_that_images_are_kept_at(tmp_path):
    """Without dataset.image_size every image must have the first one's upright size."""
    picture = upright(8, 12)
    folder = image_folder(tmp_path / "tree", {"a.png": stored(picture, 6), "b.png": stored(picture, 1)})
    images = read_imagefolder(folder, workers=1).splits["train"].images
    assert images.shape == (2, 12, 8, 3)


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_large_sideways_jpeg_is_turned_after_its_draft_decoding(orientation):
    """A tall phone photo cropped to a square: 1/8 scale covers the crop only if the draft size
    is asked of the stored, sideways image (asked upright, it would decode at 1/4)."""
    data = stored(upright(400, 3200), orientation, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as image:
        fitted = fit_image(image, (8, 8), "resize_crop")
        assert image.size == (50, 400), "decoded at 1/8 scale, then turned upright"
    corners = [0, 0, 7, 7], [0, 7, 0, 7]
    assert np.abs(fitted.astype(int) - upright(8, 8))[corners].max() <= 12
