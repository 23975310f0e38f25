"""Property tests of the readers: any image in, uint8 RGB of the asked size out, or a named error.

Images of every Pillow mode and of sizes from 1 to 4,000 pixels a side are written as real
files (PNG, JPEG, BMP, WebP, as the mode allows) and read back; archives are damaged at
random (truncated, bits flipped, sizes declared huge) and must end in a DatasetError that
names the archive. Inputs are kept small (at most PIXEL_BUDGET pixels an image, a handful of
members an archive) so no example needs much memory or time; the readers' own limits, not
a timeout, are what bound the damaged cases.
"""

from __future__ import annotations

import functools
import io
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from aavae.data.errors import DatasetError
from aavae.data.fit import RESIZE_POLICIES, fit_image
from aavae.data.imagefolder import PIL_FORMATS, read_imagefolder

PIXEL_BUDGET = 120_000  # pixels of one drawn image: a 4,000 x 30 strip, or 346 x 346
MAX_SIDE = 4_000
MODES = (
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
    "I", "I;16", "I;16B", "F", "YCbCr", "LAB", "HSV",
)  # fmt: skip
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def make_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Noise of ``size`` in ``mode`` (converted from grey noise where Pillow can)."""
    rng = np.random.default_rng(seed)
    grey = Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8))
    try:
        return grey.convert(mode)
    except ValueError:  # La, RGBa: no conversion from L, so a flat image of the mode
        return Image.new(mode, size)


@functools.cache
def writable_formats(mode: str) -> tuple[str, ...]:
    """The accepted file formats Pillow can write an image of ``mode`` in."""
    formats = []
    for image_format in PIL_FORMATS:
        try:
            Image.new(mode, (2, 2)).save(io.BytesIO(), format=image_format)
        except (OSError, ValueError, KeyError):
            continue
        formats.append(image_format)
    return tuple(formats)


@st.composite
def image_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """Each side in 1..4,000, the area within PIXEL_BUDGET (so long thin strips appear)."""
    width = draw(st.integers(1, MAX_SIDE))
    height = draw(st.integers(1, max(1, min(MAX_SIDE, PIXEL_BUDGET // width))))
    return (width, height) if draw(st.booleans()) else (height, width)


def check_rgb(array: np.ndarray, size: tuple[int, int]) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (size[1], size[0], 3)


# -- one image, through fit_image --------------------------------------------------------------


@SETTINGS
@given(
    mode=st.sampled_from(MODES),
    size=image_sizes(),
    out=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    policy=st.sampled_from(RESIZE_POLICIES),
    encode=st.booleans(),
    choice=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
@example(mode="RGB", size=(49, 50), out=(16, 16), policy="resize_crop", encode=True, choice=0, seed=0)
@example(mode="RGB", size=(392, 400), out=(16, 16), policy="resize_crop", encode=True, choice=1, seed=0)
@example(mode="L", size=(4000, 1), out=(64, 64), policy="resize_crop", encode=True, choice=1, seed=0)
@example(mode="La", size=(5, 7), out=(3, 3), policy="resize", encode=False, choice=0, seed=0)
def test_fit_image_gives_uint8_rgb_of_the_asked_size_or_a_dataset_error(
    mode, size, out, policy, encode, choice, seed
):
    """Every mode and size, decoded from a file where the mode can be written, or as is."""
    image = make_image(mode, size, seed)
    formats = writable_formats(mode)
    if encode and formats:
        image_format = formats[choice % len(formats)]
        data = io.BytesIO()
        image.save(data, format=image_format)
        image = Image.open(io.BytesIO(data.getvalue()), formats=PIL_FORMATS)
    try:
        array = fit_image(image, out, policy)
    except DatasetError as error:
        assert mode in str(error)  # the only refusal: a mode without conversion to RGB
        return
    check_rgb(array, out)


def test_a_4000_pixel_square_jpeg_is_brought_down_through_draft_mode():
    """The one big example: a 4,000 x 4,000 JPEG (flat, so it encodes fast) to 32 x 32."""
    data = io.BytesIO()
    Image.new("RGB", (MAX_SIDE, MAX_SIDE), (90, 140, 200)).save(data, format="JPEG")
    with Image.open(io.BytesIO(data.getvalue())) as image:
        array = fit_image(image, (32, 32), "resize_crop")
        assert image.size == (500, 500)  # decoded at 1/8 scale
    check_rgb(array, (32, 32))
    assert np.abs(array.astype(int) - [90, 140, 200]).max() <= 3


# -- whole image folders, through read_imagefolder ---------------------------------------------


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(extension, bytes) of an image file of a drawn mode, size and writable format."""
    mode = draw(st.sampled_from([mode for mode in MODES if writable_formats(mode)]))
    formats = writable_formats(mode)
    image_format = draw(st.sampled_from(formats))
    image = make_image(mode, draw(image_sizes()), draw(st.integers(0, 2**16)))
    data = io.BytesIO()
    image.save(data, format=image_format)
    return EXTENSIONS[image_format], data.getvalue()


@SETTINGS
@given(
    train=image_files(),
    test=image_files(),
    image_size=st.integers(1, 48),
    policy=st.sampled_from(RESIZE_POLICIES),
)
def test_an_image_folder_of_any_modes_and_sizes_reads_as_uint8_rgb_of_one_size(
    train, test, image_size, policy
):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for split, (extension, data) in (("train", train), ("test", test)):
            (root / split / "c").mkdir(parents=True)
            (root / split / "c" / f"x{extension}").write_bytes(data)
        result = read_imagefolder(root, image_size=image_size, resize=policy, workers=1)
    for imageset in result.splits.values():
        assert imageset.images.shape == (1, image_size, image_size, 3)
        assert imageset.images.dtype == np.uint8


# -- damaged archives --------------------------------------------------------------------------


def png_bytes(value: int) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (6, 5), (value, 255 - value, 40)).save(data, format="PNG")
    return data.getvalue()


MEMBERS = {f"{split}/{cls}/{i}.png": png_bytes(i * 60) for split in ("train", "test")
           for cls in ("a", "b") for i in (1, 2)}  # fmt: skip


def archived(files: dict[str, bytes], form: str) -> bytes:
    """``files`` (name -> bytes) as a zip, tar or tar.gz archive in memory."""
    buffer = io.BytesIO()
    if form == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if form == "tar.gz" else "w") as tar:
            for name, data in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@functools.cache
def archive_bytes(form: str) -> bytes:
    """A small valid image-folder archive: 8 PNGs in train/ and test/, classes a and b."""
    return archived(MEMBERS, form)


def read_or_named_error(data: bytes, form: str):
    """Read ``data`` as an image-folder archive: the result, or None after a DatasetError naming it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"damaged.{form}"
        path.write_bytes(data)
        try:
            result = read_imagefolder(path, image_size=4, workers=1)
        except DatasetError as error:
            assert str(path) in str(error), str(error)
            return None
    for imageset in result.splits.values():
        assert imageset.images.dtype == np.uint8 and imageset.images.shape[1:] == (4, 4, 3)
    return result


@functools.cache
def images_of_members(form: str) -> dict[str, tuple[np.ndarray, int]]:
    """Each member's image and label, as the undamaged archive reads."""
    whole = read_or_named_error(archive_bytes(form), form)
    found = {}
    for split, imageset in whole.splits.items():
        names = sorted(name for name in MEMBERS if name.startswith(f"{split}/"))
        found.update({name: (imageset.images[i], imageset.labels[i]) for i, name in enumerate(names)})
    return found


def assert_every_member_read(result, form: str, names: dict[str, str] | None = None,
                             changed: frozenset[str] = frozenset()) -> None:
    """A read that succeeds holds what the undamaged archive holds, never a silent part of it:
    each member's image and label, under its name in this archive (``names``: member -> that
    name; a member missing from it is not in this archive), but for the images of ``changed``."""
    names = {name: name for name in MEMBERS} if names is None else names
    expected = images_of_members(form)
    assert set(result.splits) == {"train", "test"}
    for split, imageset in result.splits.items():
        order = sorted((name, member) for member, name in names.items() if name.startswith(f"{split}/"))
        assert list(imageset.labels) == [expected[member][1] for _, member in order]
        for index, (_, member) in enumerate(order):
            if member not in changed:
                np.testing.assert_array_equal(imageset.images[index], expected[member][0])


FORMS = st.sampled_from(["tar", "tar.gz", "zip"])


@SETTINGS
@given(form=FORMS, fraction=st.floats(0, 1, exclude_max=True))
def test_a_truncated_archive_is_a_dataset_error_naming_it(form, fraction):
    data = archive_bytes(form)
    result = read_or_named_error(data[: int(len(data) * fraction)], form)
    if result is not None:  # only a cut in tar's trailing zero padding leaves every member whole
        assert_every_member_read(result, form)


def tar_members_at(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each member of an uncompressed tar starts (its header) and ends (its data)."""
    spans, offset = {}, 0
    while len(spans) < len(MEMBERS):
        name = data[offset : offset + 100].rstrip(b"\0").decode()
        size = int(data[offset + 124 : offset + 135], 8)
        spans[name] = (offset, offset + 512 + size)
        offset += 512 + (size + 511) // 512 * 512
    return spans


@SETTINGS
@given(form=FORMS, flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                  min_size=1, max_size=8))  # fmt: skip
def test_an_archive_with_flipped_bits_reads_as_before_or_is_a_dataset_error_naming_it(form, flips):
    """Zip members and gzip streams carry a CRC-32: any flip that reaches an image is refused.
    A plain tar's data has no checksum, so a flipped member may decode to other pixels (a PNG's
    image data is not checked either); every other member must read as before. Its headers
    carry a sum, which two flips of one bit in one block can cancel: such draws are left out."""
    data = bytearray(archive_bytes(form))
    positions = [int(len(data) * where) for where, _ in flips]
    for at, (_, bit) in zip(positions, flips, strict=True):
        data[at] ^= 1 << bit
    names, changed = {name: name for name in MEMBERS}, frozenset()
    if form == "zip":  # the central directory has no checksum: a flip may rename a member to a
        # file that is no image, which the reader then leaves out (a warning names it)
        try:
            listed = set(zipfile.ZipFile(io.BytesIO(bytes(data))).namelist())
        except (zipfile.BadZipFile, NotImplementedError):  # the reader must refuse it too
            listed = set()
        names = {name: name for name in MEMBERS if name in listed}
    if form == "tar":
        blocks = [(at // 512, bit) for at, (_, bit) in zip(positions, flips, strict=True)]
        assume(len(set(blocks)) == len(blocks))
        changed = frozenset(name for name, (start, end) in tar_members_at(archive_bytes(form)).items()
                            if any(start + 512 <= at < end for at in positions))
    result = read_or_named_error(bytes(data), form)
    if result is not None:
        assert_every_member_read(result, form, names, changed)


def tar_size_field(declared: int) -> bytes:
    """A tar header size field: octal where it fits in 11 digits, else GNU base-256."""
    if declared < 8**11:
        return b"%011o\0" % declared
    return b"\x80" + declared.to_bytes(11, "big")


@SETTINGS
@given(
    form=FORMS,
    member=st.integers(0, len(MEMBERS) - 1),
    declared=st.one_of(st.integers(0, 2**33), st.integers(2**33, 2**80)),
)
def test_a_member_declaring_any_size_reads_whole_or_is_a_dataset_error_naming_the_archive(form, member, declared):
    """Sizes up to 2**80 bytes are written into a member's header: refused, or read as the whole archive."""
    data = archive_bytes(form if form != "tar.gz" else "tar")
    true_size = len(MEMBERS[list(MEMBERS)[member]])
    if form == "zip":
        data = bytearray(data)
        entries = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
        at = entries[member] + 24  # the central directory's uncompressed size field
        data[at : at + 4] = min(declared, 2**32 - 1).to_bytes(4, "little")
        check_declared(read_or_named_error(bytes(data), form), form, min(declared, 2**32 - 1) == true_size)
        return
    blocks = bytearray(data)
    headers, offset = [], 0
    while len(headers) < len(MEMBERS):
        headers.append(offset)
        size = int(blocks[offset + 124 : offset + 135], 8)
        offset += 512 + (size + 511) // 512 * 512
    at = headers[member]
    blocks[at + 124 : at + 136] = tar_size_field(declared)
    blocks[at + 148 : at + 156] = b" " * 8
    blocks[at + 148 : at + 156] = b"%06o\0 " % sum(blocks[at : at + 512])
    if form == "tar.gz":
        import gzip

        result = read_or_named_error(gzip.compress(bytes(blocks)), form)
    else:
        result = read_or_named_error(bytes(blocks), form)
    blocks_of = lambda size: (size + 511) // 512  # noqa: E731
    if declared > len(blocks) - (at + 512):
        assert result is None, "a member claiming more bytes than the archive holds must be refused"
    elif blocks_of(declared) == blocks_of(true_size):  # the same blocks: the same archive
        check_declared(result, form, declared == true_size)
    # else the header moves every later member: by tar's own rules another, valid archive, which
    # read_or_named_error has checked reads as uint8 images or fails naming the file.


def check_declared(result, form: str, truthful: bool) -> None:
    """A member's true size reads whole. Another size is an error naming the archive, or, where
    the lie cannot move another member (a zip's central directory; a tar member's own padding)
    and the image decodes regardless (bytes after a PNG's end are ignored), the very images of
    the undamaged archive: never other content."""
    if truthful:
        assert result is not None, "the archive is undamaged"
    if result is not None:
        assert_every_member_read(result, form)


@SETTINGS
@given(
    form=FORMS,
    depth=st.integers(1, 200),
    junk=st.integers(0, 300),
)
def test_deep_paths_and_many_members_read_whole(form, depth, junk):
    """Images nested ``depth`` folders down inside their class, beside ``junk`` other files."""
    nested = "/".join(["n"] * depth)
    names = {name: name.replace("/1.png", f"/{nested}/1.png") for name in MEMBERS}
    members = {names[name]: data for name, data in MEMBERS.items()}
    members.update({f"train/a/junk{i}.txt": b"x" for i in range(junk)})
    buffer = io.BytesIO()
    if form == "zip":
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if form == "tar.gz" else "w") as tar:
            for name, data in members.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    result = read_or_named_error(buffer.getvalue(), form)
    assert result is not None, "a valid archive, however deep its folders, must read"
    assert_every_member_read(result, form, names)


@pytest.mark.parametrize("form", ["tar", "tar.gz", "zip"])
def test_the_undamaged_archives_of_the_properties_read_whole(form):
    """The damaged archives start from these: each must read, or the properties prove nothing."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"whole.{form}"
        path.write_bytes(archive_bytes(form))
        result = read_imagefolder(path, image_size=4, workers=1)
    assert {split: len(imageset) for split, imageset in result.splits.items()} == {
        "train": 4,
        "test": 4,
    }


# -- damaged official datasets -----------------------------------------------------------------


@functools.cache
def cifar_archive_bytes(form: str) -> bytes:
    """The CIFAR-10 python file set with two images per batch, as a tar or a zip."""
    import pickle

    rng = np.random.default_rng(0)
    files = {
        f"cifar-10-batches-py/{name}": pickle.dumps(
            {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [3, 7]},
            protocol=2,
        )
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }
    names = [f"class{i}".encode() for i in range(10)]
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": names}, protocol=2)
    return archived(files, form)


@SETTINGS
@given(
    form=FORMS,
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), max_size=8),
)
def test_a_damaged_cifar10_archive_reads_or_is_a_dataset_error_naming_it(form, cut, flips):
    """Pickles inside a plain tar have no checksum: flipped bits reach the unpickler."""
    from aavae.data.cifar10 import read_cifar10

    data = bytearray(cifar_archive_bytes(form))
    for where, bit in flips:
        data[int(len(data) * where)] ^= 1 << bit
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"cifar.{form}"
        path.write_bytes(bytes(data[: max(1, int(len(data) * cut))]))
        try:
            result = read_cifar10(path)
        except DatasetError as error:
            assert str(path) in str(error), str(error)
            return
    assert result.splits["train"].images.shape == (10, 32, 32, 3)
