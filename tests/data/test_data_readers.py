"""Dataset readers: tiny archives in each official format are built here and read back exactly."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pickle
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aavae.data import archive as archive_module
from aavae.data import cifar10, imagefolder, stl10
from aavae.data.archive import open_source
from aavae.data.cifar10 import CIFAR10, read_cifar10
from aavae.data.errors import DatasetError
from aavae.data.fit import fit_image
from aavae.data.folder_images import iter_image_batches, list_images
from aavae.data.imagefolder import read_imagefolder
from aavae.data.imageset import UNLABELED
from aavae.data.stl10 import STL10, read_stl10
from tests.helpers.datasets import (
    CIFAR_CLASSES,
    build_tree,
    cifar_expected,
    save,
    tar_folder,
    write_cifar_folder,
)

SHARED_DATASETS = Path(__file__).parents[2].parent / "shared" / "datasets"
CIFAR10_JPEG = SHARED_DATASETS / "cifar10_jpeg.tar.gz"


# -- helpers that write archives ---------------------------------------------------------------


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            zf.write(path, f"{top}/{name}" if top else name)
    return archive


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def as_official(monkeypatch, reader_module, name: str, archive: Path) -> None:
    """Take ``archive`` (a test's own) for the official one: give the reader its md5."""
    official = getattr(reader_module, name)
    monkeypatch.setattr(reader_module, name, dataclasses.replace(official, md5=md5_of(archive)))


def truncated_copy(path: Path, destination: Path) -> Path:
    data = path.read_bytes()
    destination.write_bytes(data[: len(data) // 2])
    return destination


# -- CIFAR-10 ----------------------------------------------------------------------------------









@pytest.fixture
def cifar_folder(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path / "cifar-10-batches-py"
    return folder, write_cifar_folder(folder)


def check_cifar(result, batches: dict[str, dict]) -> None:
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    for split, source in (("train", train), ("test", [batches["test_batch"]])):
        images, labels = cifar_expected(source)
        imageset = result.splits[split]
        np.testing.assert_array_equal(imageset.images, images)
        np.testing.assert_array_equal(imageset.labels, labels)
        assert imageset.class_names == CIFAR_CLASSES
        assert imageset.split == split
    assert result.format == "cifar10-python"


def test_cifar10_reads_the_extracted_folder_pixel_for_pixel(cifar_folder):
    folder, batches = cifar_folder
    result = read_cifar10(folder)
    check_cifar(result, batches)
    first = batches["data_batch_1"][b"data"][0]
    assert (
        result.splits["train"].images[0, 1, 2, 2] == first[2 * 1024 + 1 * 32 + 2]
    )  # B at y=1, x=2
    assert result.archive_sha256 is None  # a folder: no file to checksum, but a fingerprint
    assert result.sha256 == read_cifar10(folder).sha256 and len(result.sha256) == 64
    assert result.describe()["splits"]["train"]["count"] == 15


def test_an_image_size_the_official_datasets_do_not_use_is_said_not_silently_ignored(cifar_folder, caplog):
    """CIFAR-10 is read at its own 32 px whatever dataset.image_size says (conf/base's 16 reaches
    a `--params dataset.name=cifar10` run): ingest says so, and the images stay 32 px."""
    from aavae.pipelines.ingest.nodes import ingest

    folder, _ = cifar_folder
    caplog.set_level(logging.WARNING, logger="aavae.pipelines.ingest.nodes")
    train = ingest({"name": "cifar10", "path": str(folder), "image_size": 16})[0]
    assert train.image_shape[:2] == (32, 32)
    assert any("dataset.image_size=16 is not used for cifar10: its images are 32 px" in r.getMessage()
               for r in caplog.records), caplog.text
    caplog.clear()
    ingest({"name": "cifar10", "path": str(folder), "image_size": None})
    assert not [r for r in caplog.records if "is not used" in r.getMessage()]


def test_cifar10_reads_the_archive_in_memory_and_checks_its_md5(cifar_folder, tmp_path, monkeypatch):
    folder, batches = cifar_folder
    archive = tar_folder(folder.parent, tmp_path / CIFAR10.archive_name)
    as_official(monkeypatch, cifar10, "CIFAR10", archive)
    result = read_cifar10(archive)
    check_cifar(result, batches)
    assert result.archive_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result.sha256 == read_cifar10(folder).sha256  # same content, same fingerprint
    assert not (tmp_path / "extracted").exists()


def test_cifar10_finds_the_archive_or_folder_inside_a_root_folder(cifar_folder, tmp_path, monkeypatch):
    folder, batches = cifar_folder
    check_cifar(read_cifar10(tmp_path), batches)  # the root holding cifar-10-batches-py/
    root = tmp_path / "root"
    root.mkdir()
    archive = tar_folder(folder.parent, root / CIFAR10.archive_name)
    as_official(monkeypatch, cifar10, "CIFAR10", archive)
    check_cifar(read_cifar10(root), batches)


def test_cifar10_md5_mismatch_names_file_and_both_checksums(cifar_folder, tmp_path):
    folder, _ = cifar_folder
    archive = tar_folder(folder.parent, tmp_path / CIFAR10.archive_name)
    with pytest.raises(DatasetError) as error:
        read_cifar10(archive)  # the official md5 cannot match a fake archive
    message = str(error.value)
    assert str(archive) in message and CIFAR10.md5 in message and md5_of(archive) in message
    assert "download" in message


def test_cifar10_repacked_archive_under_another_name_is_read_without_md5(cifar_folder, tmp_path):
    folder, batches = cifar_folder
    check_cifar(read_cifar10(tar_folder(folder.parent, tmp_path / "mine.tar")), batches)


def test_cifar10_download_uses_torchvision_with_official_url_and_md5(
    cifar_folder, tmp_path, monkeypatch
):
    import torchvision.datasets.utils

    folder, batches = cifar_folder
    packed = tar_folder(folder.parent, tmp_path / "packed.tar.gz")
    calls = []

    def fake_download_url(url, root, filename=None, md5=None):
        calls.append((url, md5))
        Path(root, filename).write_bytes(packed.read_bytes())

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download_url)
    as_official(monkeypatch, cifar10, "CIFAR10", packed)
    result = read_cifar10(tmp_path / "new_root", download=True)
    assert calls == [(CIFAR10.url, md5_of(packed))]
    assert result.source == str(tmp_path / "new_root" / CIFAR10.archive_name)
    check_cifar(result, batches)


def test_cifar10_refuses_pickles_that_would_run_code(cifar_folder, tmp_path):
    folder, _ = cifar_folder
    target = tmp_path / "created_by_pickle"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_2.*mkdir.*not allowed"):
        read_cifar10(folder)
    assert not target.exists()


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no key 'labels'"),
        (
            {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
            "'data' must be a uint8 array",
        ),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "'labels' must lie in 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 'labels'"),
        ([1, 2, 3], "holds a list, expected a dict"),
    ],
)
def test_cifar10_malformed_batch_names_the_file_and_key(cifar_folder, batch, expected):
    folder, _ = cifar_folder
    (folder / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DatasetError, match=f"data_batch_4.*{expected}") as error:
        read_cifar10(folder)
    assert "Use the official cifar-10-python.tar.gz (--params dataset.download=true" in str(
        error.value
    )  # what to do, not only what is wrong


def test_cifar10_missing_batch_is_named(cifar_folder):
    folder, _ = cifar_folder
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        read_cifar10(folder)


def test_two_copies_of_a_batch_are_refused_naming_both(cifar_folder, tmp_path):
    from aavae.data.archive import open_source

    folder, _ = cifar_folder
    for copy in ("copy_a", "copy_b"):
        (tmp_path / "root" / copy).mkdir(parents=True)
        (tmp_path / "root" / copy / "data_batch_1").write_bytes((folder / "data_batch_1").read_bytes())
    with open_source(tmp_path / "root") as source, pytest.raises(DatasetError) as info:
        list(source.named_files({"data_batch_1"}, "CIFAR-10"))
    message = str(info.value)
    assert "'data_batch_1' twice" in message and "copy_a" in message and "copy_b" in message
    assert "keep one copy of the CIFAR-10 files" in message


def test_cifar10_truncated_archive_names_the_file(cifar_folder, tmp_path):
    folder, _ = cifar_folder
    archive = tar_folder(folder.parent, tmp_path / "whole.tar.gz")
    broken = truncated_copy(archive, tmp_path / "broken.tar.gz")
    with pytest.raises(DatasetError, match="broken.tar.gz.*truncated or corrupt"):
        read_cifar10(broken)


def test_cifar10_missing_or_unknown_path_lists_accepted_layouts(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"'.*nowhere' does not exist.*cifar-10-python.tar.gz.*dataset.path.*"
        r"--params dataset.download=true",
    ):
        read_cifar10(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="does not hold CIFAR-10.*cifar-10-batches-py"):
        read_cifar10(tmp_path)


def test_a_jpeg_copy_given_to_the_cifar10_reader_is_pointed_to_the_imagefolder_env(tmp_path):
    """The issue's case: `--env cifar10` on a JPEG tree, as a folder and as an archive."""
    tree = tmp_path / "cifar10_jpeg"
    (tree / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tree / "train" / "cat" / "0.jpg")
    hint = "--env imagefolder --params dataset.path=<it>"
    with pytest.raises(DatasetError, match="does not hold CIFAR-10") as in_folder:
        read_cifar10(tree)
    assert hint in str(in_folder.value)
    archive = tmp_path / "cifar10_jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10_jpeg")
    with pytest.raises(DatasetError, match="lacks batches.meta") as in_archive:
        read_cifar10(archive)
    assert hint in str(in_archive.value)
    assert "--env cifar10_short" in str(in_archive.value), "the short recipe is named too"


# -- STL-10 ------------------------------------------------------------------------------------

STL_COUNTS = {"train": 3, "test": 2, "unlabeled": 4}
STL_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def stl_image(index: int) -> np.ndarray:
    """96 x 96 x 3 with red = row, green = column, blue = image index: a transpose shows."""
    rows, columns = np.mgrid[0:96, 0:96]
    return np.stack([rows, columns, np.full_like(rows, index)], axis=-1).astype(np.uint8)


def write_stl_folder(folder: Path, counts: dict[str, int] = STL_COUNTS) -> None:
    folder.mkdir(parents=True)
    offset = 0
    for split, count in counts.items():
        with open(folder / f"{split}_X.bin", "wb") as stream:
            for index in range(offset, offset + count):
                image = stl_image(index)
                for channel in range(3):  # each channel plane stored column-major
                    stream.write(image[:, :, channel].tobytes(order="F"))
        offset += count
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(STL_CLASSES) + "\n")
    (folder / "fold_indices.txt").write_text("0 1\n")


def check_stl(result, splits=tuple(STL_COUNTS)) -> None:
    assert tuple(result.splits) == splits
    offset = 0
    for split, count in STL_COUNTS.items():
        if split in splits:
            imageset = result.splits[split]
            assert imageset.images.shape == (count, 96, 96, 3)
            rows = np.broadcast_to(np.arange(96)[:, None], (96, 96))
            np.testing.assert_array_equal(
                imageset.images[..., 0], np.broadcast_to(rows, (count, 96, 96))
            )
            np.testing.assert_array_equal(
                imageset.images[..., 1], np.broadcast_to(rows.T, (count, 96, 96))
            )
            np.testing.assert_array_equal(
                imageset.images[:, 0, 0, 2], np.arange(offset, offset + count)
            )
            expected = np.full(count, UNLABELED) if split == "unlabeled" else np.arange(count) % 10
            np.testing.assert_array_equal(imageset.labels, expected)
            assert imageset.class_names == STL_CLASSES
        offset += count


def test_stl10_reads_folder_and_archive_without_transposing(tmp_path):
    folder = tmp_path / "data" / "stl10_binary"
    write_stl_folder(folder)
    check_stl(read_stl10(folder))
    archive = tar_folder(tmp_path / "data", tmp_path / "stl10.tar.gz")
    result = read_stl10(archive)  # not named like the official archive: no md5 check
    check_stl(result)
    assert result.archive_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert result.format == "stl10-binary"


def test_stl10_reads_only_the_chosen_splits(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl_folder(folder)
    (folder / "unlabeled_X.bin").unlink()
    check_stl(read_stl10(tmp_path, splits=("train", "test")), splits=("train", "test"))
    with pytest.raises(DatasetError, match="lacks unlabeled_X.bin"):
        read_stl10(folder)


def test_stl10_reads_images_in_chunks_across_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(stl10, "CHUNK_IMAGES", 2)  # 3 and 4 images: full and partial chunks
    write_stl_folder(tmp_path / "data" / "stl10_binary")
    check_stl(read_stl10(tar_folder(tmp_path / "data", tmp_path / "stl10.tar.gz")))


def test_stl10_official_archive_name_gets_its_md5_checked(tmp_path, monkeypatch):
    write_stl_folder(tmp_path / "data" / "stl10_binary")
    archive = tar_folder(tmp_path / "data", tmp_path / STL10.archive_name)
    with pytest.raises(DatasetError, match=f"{STL10.archive_name}.*{STL10.md5}"):
        read_stl10(archive)
    as_official(monkeypatch, stl10, "STL10", archive)
    check_stl(read_stl10(archive))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda folder: (folder / "train_X.bin").write_bytes(b"\0" * 1000),
            "train_X.bin.*not a multiple",
        ),
        (
            lambda folder: np.array([1, 11, 2], np.uint8).tofile(folder / "train_y.bin"),
            "train_y.bin.*1..10",
        ),
        (
            lambda folder: np.array([1, 2], np.uint8).tofile(folder / "test_y.bin"),
            "test_y.bin' has 2 labels",
        ),
        (
            lambda folder: (folder / "class_names.txt").write_text("one\ntwo\n"),
            "class_names.txt.* names 2 classes",
        ),
    ],
)
def test_stl10_damaged_file_is_named(tmp_path, damage, expected):
    folder = tmp_path / "stl10_binary"
    write_stl_folder(folder, {"train": 3, "test": 1, "unlabeled": 1})
    damage(folder)
    with pytest.raises(DatasetError, match=expected) as error:
        read_stl10(folder)
    assert "Use the official stl10_binary.tar.gz (--params dataset.download=true" in str(
        error.value
    )  # what to do, not only what is wrong


def test_stl10_unknown_split_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="splits=.*'val'.*train, test, unlabeled"):
        read_stl10(tmp_path, splits=("train", "val"))


# -- image folders -----------------------------------------------------------------------------






FORMS = ("folder", "tar", "tar.gz", "tgz", "zip", "zip-in-top-folder", "tar.gz-in-top-folder")


def packed(tree: Path, form: str, tmp_path: Path) -> Path:
    if form == "folder":
        return tree
    if form.startswith("zip"):
        return zip_folder(tree, tmp_path / "data.zip", top="mydata" if "top" in form else None)
    suffix = form.split("-")[0]
    mode = "w" if suffix == "tar" else "w:gz"
    return tar_folder(
        tree, tmp_path / f"data.{suffix}", mode, top="mydata" if "top" in form else None
    )


@pytest.mark.parametrize("form", FORMS)
def test_imagefolder_reads_every_container_pixel_for_pixel(tmp_path, form):
    expected = build_tree(tmp_path / "tree")
    result = read_imagefolder(packed(tmp_path / "tree", form, tmp_path), image_size=8, workers=2)
    assert list(result.splits) == ["train", "test"]
    for split, (images, labels) in expected.items():
        imageset = result.splits[split]
        np.testing.assert_array_equal(imageset.images, np.stack(images))
        np.testing.assert_array_equal(imageset.labels, labels)
        assert imageset.class_names == ("cat", "dog")
    assert result.skipped == [] and result.format == "imagefolder"
    assert (result.archive_sha256 is None) == (form == "folder")
    # every container of the same tree holds the same images: one content fingerprint
    assert result.sha256 == read_imagefolder(tmp_path / "tree", image_size=8).sha256


def test_imagefolder_many_batches_over_threads_match_one_batch(tmp_path, monkeypatch):
    expected = build_tree(tmp_path / "tree")
    (tmp_path / "tree/train/cat/broken.png").write_bytes(b"\x89PNG broken")
    archive = tar_folder(tmp_path / "tree", tmp_path / "data.tar.gz")
    monkeypatch.setattr(imagefolder, "BATCH_SIZE", 1)  # one task per image, many in flight
    result = read_imagefolder(archive, on_bad_image="skip", workers=2)
    assert result.skipped == ["train/cat/broken.png"]
    for split, (images, labels) in expected.items():
        np.testing.assert_array_equal(result.splits[split].images, np.stack(images))
        np.testing.assert_array_equal(result.splits[split].labels, labels)


def test_imagefolder_without_image_size_keeps_the_size(tmp_path):
    build_tree(tmp_path / "tree")
    assert read_imagefolder(tmp_path / "tree").splits["train"].image_shape == (8, 8, 3)


def test_imagefolder_refuses_mixed_sizes_without_image_size(tmp_path):
    build_tree(tmp_path / "tree")
    save(tmp_path / "tree/train/dog/z.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(DatasetError, match="train/dog/z.png.*12x10.*8x8.*image_size"):
        read_imagefolder(tmp_path / "tree")


def stripes(width: int, height: int) -> np.ndarray:
    """Red, green and blue vertical thirds."""
    image = np.zeros((height, width, 3), np.uint8)
    for third in range(3):
        image[:, third * width // 3 : (third + 1) * width // 3, third] = 255
    return image


def test_imagefolder_resize_crop_keeps_the_centre_and_resize_squashes(tmp_path):
    save(tmp_path / "tree/train/only/wide.png", stripes(48, 16))
    cropped = read_imagefolder(tmp_path / "tree", image_size=4).splits["train"].images[0]
    assert cropped.shape == (4, 4, 3)
    assert (cropped.argmax(axis=-1) == 1).all()  # only the green middle third survives
    np.testing.assert_array_equal(cropped[:, 1:3], np.broadcast_to([0, 255, 0], (4, 2, 3)))
    squashed = (
        read_imagefolder(tmp_path / "tree", image_size=4, resize="resize").splits["train"].images[0]
    )
    assert (squashed[:, 0].argmax(axis=-1) == 0).all() and (
        squashed[:, -1].argmax(axis=-1) == 2
    ).all()


def test_large_jpeg_is_decoded_in_draft_mode_when_shrinking(tmp_path):
    path = tmp_path / "big.jpg"
    save(path, np.broadcast_to(np.array([180, 60, 30], np.uint8), (192, 256, 3)).copy(), quality=95)
    with Image.open(path) as image:
        small = fit_image(image, (32, 32), "resize_crop")
        assert image.size == (64, 48)  # decoded at 1/4 scale, still covering 43 x 32
    assert small.shape == (32, 32, 3)
    assert np.abs(small.astype(int) - [180, 60, 30]).max() <= 4


def test_imagefolder_bad_image_errors_or_is_skipped(tmp_path):
    build_tree(tmp_path / "tree")
    (tmp_path / "tree/train/cat/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        png, format="PNG"
    )
    (tmp_path / "tree/test/dog/cut.png").write_bytes(
        png.getvalue()[:100]
    )  # header whole, pixels cut
    archive = tar_folder(tmp_path / "tree", tmp_path / "data.tar.gz")
    with pytest.raises(
        DatasetError, match="Cannot decode image 'test/dog/cut.png' in archive.*data.tar.gz"
    ):
        read_imagefolder(archive, workers=1)
    result = read_imagefolder(archive, on_bad_image="skip")
    assert result.skipped == ["test/dog/cut.png", "train/cat/broken.jpg"]
    assert len(result.splits["train"]) == 4 and len(result.splits["test"]) == 2
    np.testing.assert_array_equal(result.splits["test"].labels, [0, 1])


def test_imagefolder_class_with_only_bad_images_is_an_error_when_skipping(tmp_path):
    build_tree(tmp_path / "tree")
    (tmp_path / "tree/test/dog/f.webp").write_bytes(b"RIFF broken")
    with pytest.raises(DatasetError, match="Class 'dog' of split 'test'.*no readable images"):
        read_imagefolder(tmp_path / "tree", on_bad_image="skip")


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_imagefolder_class_mismatch_names_class_and_split(tmp_path, form):
    build_tree(tmp_path / "tree")
    save(tmp_path / "tree/test/bird/g.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        DatasetError, match="Class 'bird' of split 'test' is missing from split 'train'"
    ):
        read_imagefolder(packed(tmp_path / "tree", form, tmp_path))
    (tmp_path / "tree/test/bird/g.png").unlink()
    (tmp_path / "tree/test/bird").rmdir()
    for path in (tmp_path / "tree/test/dog").iterdir():
        path.unlink()
    (tmp_path / "tree/test/dog").rmdir()
    with pytest.raises(
        DatasetError, match="Class 'dog' is in split 'train' but missing from split 'test'"
    ):
        read_imagefolder(packed(tmp_path / "tree", form, tmp_path))


@pytest.mark.parametrize("form", ["folder", "tar", "zip"])
def test_imagefolder_empty_class_folder_is_named(tmp_path, form):
    build_tree(tmp_path / "tree")
    (tmp_path / "tree/train/bird").mkdir()
    (tmp_path / "tree/test/bird").mkdir()
    (tmp_path / "tree/train/bird/notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="Class folder 'train/bird' .* holds no images"):
        read_imagefolder(packed(tmp_path / "tree", form, tmp_path))


def test_imagefolder_without_train_split_lists_what_it_found(tmp_path):
    save(tmp_path / "tree/test/cat/a.png", np.zeros((8, 8, 3), np.uint8))
    save(tmp_path / "tree/val/cat/a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        DatasetError,
        match="no 'train' split: found 'test', 'val'. Expected <split>/<class>/<image>",
    ):
        read_imagefolder(tmp_path / "tree")


def test_imagefolder_image_outside_a_class_folder_is_named(tmp_path):
    build_tree(tmp_path / "tree")
    save(tmp_path / "tree/train/stray.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="tree/train/stray.png' is not inside a class folder"):
        read_imagefolder(tmp_path / "tree")


def test_imagefolder_missing_path_and_bad_arguments(tmp_path):
    with pytest.raises(
        DatasetError, match="'.*absent' does not exist. Expected <split>/<class>/<image>"
    ):
        read_imagefolder(tmp_path / "absent")
    build_tree(tmp_path / "tree")
    with pytest.raises(DatasetError, match="resize='squash'"):
        read_imagefolder(tmp_path / "tree", resize="squash")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="on_bad_image='ignore'"):
        read_imagefolder(tmp_path / "tree", on_bad_image="ignore")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="image_size=0"):
        read_imagefolder(tmp_path / "tree", image_size=0)


def test_imagefolder_truncated_archive_names_the_file(tmp_path):
    build_tree(tmp_path / "tree")
    archive = tar_folder(tmp_path / "tree", tmp_path / "whole.tar.gz")
    with pytest.raises(DatasetError, match="half.tar.gz.*truncated or corrupt"):
        read_imagefolder(truncated_copy(archive, tmp_path / "half.tar.gz"))
    zipped = zip_folder(tmp_path / "tree", tmp_path / "whole.zip")
    with pytest.raises(DatasetError, match="half.zip.*truncated or corrupt"):
        read_imagefolder(truncated_copy(zipped, tmp_path / "half.zip"))


def test_a_file_that_is_no_archive_is_refused(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"just bytes")
    with pytest.raises(DatasetError, match="data.bin' is neither a folder nor a readable archive"):
        read_imagefolder(tmp_path / "data.bin")


# -- untrusted archives ------------------------------------------------------------------------


def tar_with(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("train/cat/fine.png"), io.BytesIO())
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return archive


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.size = kind, linkname, 1 if kind == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (tar_member("/etc/passwd.png"), "'/etc/passwd.png' .* absolute path"),
        (tar_member("train/../../escape.png"), r"'train/../../escape.png' .* '\.\.'"),
        (
            tar_member("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"),
            "'train/cat/link.png' .* link",
        ),
        (
            tar_member("train/cat/hard.png", tarfile.LNKTYPE, "train/cat/fine.png"),
            "'train/cat/hard.png' .* link",
        ),
        (
            tar_member("train/cat/fifo.png", tarfile.FIFOTYPE),
            "'train/cat/fifo.png' .* special file",
        ),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, expected):
    with pytest.raises(DatasetError, match=f"Refusing {expected}"):
        read_imagefolder(tar_with(tmp_path, member))


def test_unsafe_zip_members_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/cat/../../../escape.png", b"x")
    with pytest.raises(DatasetError, match=r"Refusing 'train/cat/../../../escape.png' .* '\.\.'"):
        read_imagefolder(archive)
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("train/cat/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="Refusing 'train/cat/link.png' .* symbolic link"):
        read_imagefolder(archive)


def archive_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A .zip, .tar or .tar.gz (by ``path``'s name) holding ``members`` in this order, repeats too."""
    if path.suffix == ".zip":
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
            warnings.simplefilter("ignore")  # zipfile warns of a repeated name, and writes it
            for name, data in members:
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz"])
@pytest.mark.parametrize("repeated", ["train/dog/1.png", "./train/dog/1.png"])
def test_an_archive_holding_a_name_twice_is_refused_by_every_reader(tmp_path, form, repeated):
    """Tools keep the last of two files of one name, silently: ingest would label it as the first."""
    cat, dog = png_of(0), png_of(200)
    members = [("train/cat/1.png", cat), ("test/cat/1.png", cat), ("train/dog/1.png", dog),
               ("test/dog/1.png", dog), (repeated, cat)]
    archive = archive_of(tmp_path / f"twice.{form}", members)
    refused = "Refusing 'train/dog/1.png' in archive .* two files of this name"
    with pytest.raises(DatasetError, match=refused):
        read_imagefolder(archive, image_size=4)
    with pytest.raises(DatasetError, match=refused):
        list(iter_image_batches(archive, 4))  # streamed without a listing first
    with pytest.raises(DatasetError, match=refused):
        list_images(archive)


def png_of(value: int) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(data, format="PNG")
    return data.getvalue()


def test_members_declaring_absurd_sizes_are_refused(tmp_path):
    archive = tar_with(tmp_path, tar_member("train/cat/huge.png"))
    with pytest.raises(
        DatasetError,
        match="Refusing 'train/cat/huge.png' .* declares 1 bytes, more than the 0 bytes",
    ):
        open_source(archive, max_member_bytes=0).entries()


# -- the real thing ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ingests_the_shared_cifar10_jpeg_tree():
    if not CIFAR10_JPEG.is_file():
        pytest.skip(
            f"{CIFAR10_JPEG} is absent: the shared CIFAR-10 JPEG tree is not on this machine"
        )
    result = read_imagefolder(CIFAR10_JPEG)
    train, test = result.splits["train"], result.splits["test"]
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.image_shape == test.image_shape == (32, 32, 3)
    assert len(train.class_names) == 10 and train.class_names == test.class_names
    assert set(train.counts_per_class().values()) == {5_000}
    assert set(test.counts_per_class().values()) == {1_000}
    assert 0 < train.images.mean() < 255 and result.skipped == []


# -- hints name what a user types; decode errors name the file (issue #14, item 8) -----------


def bad_image_archive(tmp_path: Path) -> Path:
    build_tree(tmp_path / "tree")
    (tmp_path / "tree/train/cat/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tar_folder(tmp_path / "tree", tmp_path / "data.tar.gz")


def md5_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar_folder(folder)
    read_cifar10(tar_folder(folder.parent, tmp_path / CIFAR10.archive_name))


def stl_without_unlabeled(tmp_path: Path) -> None:
    write_stl_folder(tmp_path / "stl10_binary", {"train": 1, "test": 1})
    read_stl10(tmp_path / "stl10_binary")


def mixed_sizes(tmp_path: Path) -> None:
    build_tree(tmp_path / "tree")
    save(tmp_path / "tree/train/dog/z.png", np.zeros((10, 12, 3), np.uint8))
    read_imagefolder(tmp_path / "tree")


@pytest.mark.parametrize(
    ("failing_read", "hint", "python_spelling"),
    [
        (
            lambda tmp_path: read_imagefolder(bad_image_archive(tmp_path), workers=1),
            "--params dataset.on_bad_image=skip",
            "on_bad_image='skip'",
        ),
        (mixed_sizes, "--params dataset.image_size=<side>", "pass image_size"),
        (md5_mismatch, "--params dataset.download=true", "expected_md5=None"),
        (md5_mismatch, f"another name than '{CIFAR10.archive_name}'", "expected_md5"),
        (stl_without_unlabeled, "--params dataset.unlabeled=false", "choose other splits"),
        (lambda tmp_path: read_cifar10(tmp_path), "--params dataset.download=true", "download=True"),
        (
            lambda tmp_path: read_stl10(tmp_path / "absent"),
            "--params dataset.download=true",
            "download=True",
        ),
    ],
)
def test_hints_name_the_parameter_as_a_user_types_it(tmp_path, failing_read, hint, python_spelling):
    """Users run `kedro run --params ...`; a Python keyword they cannot type is no help."""
    with pytest.raises(DatasetError) as error:
        failing_read(tmp_path)
    assert hint in str(error.value)
    assert python_spelling not in str(error.value)


@pytest.mark.parametrize("form", ["folder", "tar.gz", "zip"])
def test_an_undecodable_image_is_named_by_file_not_by_an_in_memory_stream(tmp_path, form):
    build_tree(tmp_path / "tree")
    (tmp_path / "tree/train/cat/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    path = packed(tmp_path / "tree", form, tmp_path)
    with pytest.raises(DatasetError) as error:
        read_imagefolder(path, workers=1)
    message = str(error.value)
    assert "BytesIO" not in message and " at 0x" not in message
    if form == "folder":
        assert f"'{tmp_path / 'tree/train/cat/broken.jpg'}'" in message
    else:
        assert f"'train/cat/broken.jpg' in archive '{path}'" in message
    assert "not a JPEG, PNG, BMP or WebP image" in message


# -- a content fingerprint for every source (item 9) -------------------------------------------


def test_replacing_images_at_the_same_counts_changes_the_fingerprint(tmp_path):
    """Pretraining keys checkpoints on (name, sha256, split counts): a folder needs a sha256."""
    build_tree(tmp_path / "tree")
    before = read_imagefolder(tmp_path / "tree", image_size=8)
    assert before.sha256 is not None
    assert read_imagefolder(tmp_path / "tree", image_size=8).sha256 == before.sha256
    save(tmp_path / "tree/train/cat/a.png", np.full((8, 8, 3), 7, np.uint8))  # same name, size
    after = read_imagefolder(tmp_path / "tree", image_size=8)
    assert after.describe()["splits"] == before.describe()["splits"]  # the counts cannot tell
    assert after.sha256 != before.sha256
    assert read_imagefolder(tmp_path / "tree", image_size=4).sha256 != after.sha256
    save(tmp_path / "tree/train/only/wide.png", stripes(48, 16))
    save(tmp_path / "tree/test/only/wide.png", stripes(48, 16))
    cropped = read_imagefolder(tmp_path / "tree", image_size=4)
    squashed = read_imagefolder(tmp_path / "tree", image_size=4, resize="resize")
    assert cropped.sha256 != squashed.sha256  # same files, other training images


def test_the_ingest_node_writes_a_fingerprint_for_a_folder_into_the_card(tmp_path):
    from aavae.pipelines.ingest.nodes import ingest

    build_tree(tmp_path / "tree")
    params = {"name": "imagefolder", "path": str(tmp_path / "tree"), "image_size": 8}
    card = ingest(params)[-1]
    assert card["sha256"] == read_imagefolder(tmp_path / "tree", image_size=8).sha256
    assert card["archive_sha256"] is None
    (tmp_path / "tree/train/cat/b.JPG").unlink()
    save(tmp_path / "tree/train/cat/b.png", np.zeros((8, 8, 3), np.uint8))
    assert ingest(params)[-1]["sha256"] != card["sha256"]


def test_a_cifar10_folder_with_other_batches_gets_another_fingerprint(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder)
    before = read_cifar10(folder).sha256
    batch = batches["data_batch_3"]
    batch[b"data"] = 255 - batch[b"data"]
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    assert read_cifar10(folder).sha256 != before


# -- the centred crop box is exact (item 10) ---------------------------------------------------


@pytest.mark.parametrize(
    ("size", "image_format"),
    [((49, 50), "PNG"), ((50, 49), "PNG"), ((98, 197), "PNG"), ((392, 400), "JPEG")],
)
def test_resize_crop_of_sizes_whose_float_box_started_below_zero(tmp_path, size, image_format):
    """16 / (16 / 49) > 49 in floats: the box began at -3.6e-15 and Pillow refused it.

    The 392 x 400 JPEG is decoded in draft mode at 1/8 scale, i.e. 49 x 50: the photo case.
    """
    path = tmp_path / f"image.{image_format.lower()}"
    save(path, np.full((size[1], size[0], 3), [200, 100, 50], np.uint8), format=image_format)
    with Image.open(path) as image:
        out = fit_image(image, (16, 16), "resize_crop")
        assert image.size in ((49, 50), (50, 49), (98, 197))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - [200, 100, 50]).max() <= 3


def test_a_photo_folder_of_mixed_sizes_ingests(tmp_path):
    for index, (width, height) in enumerate([(392, 400), (640, 480), (49, 50), (300, 1000)]):
        for split in ("train", "test"):
            save(tmp_path / f"tree/{split}/c/{index}.jpg", stripes(width, height), format="JPEG")
    result = read_imagefolder(tmp_path / "tree", image_size=16)
    assert result.splits["train"].images.shape == (4, 16, 16, 3)


# -- archives and files cannot make a reader allocate what they declare -----------------------


def tar_header(name: str, kind: bytes, declared: int) -> bytes:
    """One 512-byte tar header whose size field declares ``declared`` bytes (base-256)."""
    member = tarfile.TarInfo(name)
    member.type = kind
    block = bytearray(member.tobuf(format=tarfile.GNU_FORMAT)[:512])
    block[124:136] = b"\x80" + declared.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@pytest.mark.parametrize(
    "kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE, tarfile.REGTYPE], ids=["gnu", "pax", "file"]
)
@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
def test_a_tar_header_declaring_a_terabyte_is_refused_before_it_is_read(tmp_path, kind, compressed):
    """tarfile reads a pax or long-name header in one call, allocating what it declares."""
    data = tar_header("././@LongLink" if kind != tarfile.REGTYPE else "train/c/x.png", kind, 10**12)
    data += b"\0" * 2048
    path = tmp_path / ("evil.tar.gz" if compressed else "evil.tar")
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(DatasetError, match=f"'{path}'") as error:
        read_imagefolder(path)
    assert "1,000,000,000,000 bytes" in str(error.value) or "truncated" in str(error.value)


def test_a_zip_member_longer_than_it_declares_is_read_only_as_far_as_declared(tmp_path):
    """A 32 MB deflate stream declared as 1,000 bytes must not be decompressed in one go."""
    import tracemalloc

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/c/a.png", b"\0" * 32 * 1024**2)
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")  # uncompressed size
    archive.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=f"'train/c/a.png' in archive '{archive}'"):
            read_imagefolder(archive, workers=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_zip_members_whose_expansion_cannot_be_bounded_are_refused(tmp_path, method):
    build_tree(tmp_path / "tree")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", method) as zf:
        for path in sorted((tmp_path / "tree").rglob("*.png")):
            zf.write(path, path.relative_to(tmp_path / "tree").as_posix())
    with pytest.raises(DatasetError, match=f"Refusing 'train/cat/a.png' in archive '{archive}'.*deflate"):
        read_imagefolder(archive)


@pytest.mark.parametrize("form", ["tar.gz", "zip"])
def test_an_archive_of_too_many_members_is_refused(tmp_path, monkeypatch, form):
    from aavae.data import archive as archive_module

    build_tree(tmp_path / "tree")
    for index in range(40):
        (tmp_path / f"tree/train/cat/note{index}.txt").write_text("x")
    path = packed(tmp_path / "tree", form, tmp_path)
    monkeypatch.setattr(archive_module, "DEFAULT_MAX_MEMBERS", 30)
    with pytest.raises(DatasetError, match=f"'{path}'.* more than 30 members"):
        read_imagefolder(path)


def test_deeply_nested_members_are_read(tmp_path):
    deep = "/".join(["d"] * 300)
    array = np.zeros((8, 8, 3), np.uint8)
    for split in ("train", "test"):
        save(tmp_path / "flat" / f"{split}.png", array)
    with tarfile.open(tmp_path / "deep.tar", "w") as tar:
        for split in ("train", "test"):
            tar.add(tmp_path / "flat" / f"{split}.png", arcname=f"{split}/c/{deep}/x.png")
    result = read_imagefolder(tmp_path / "deep.tar")
    assert len(result.splits["train"]) == len(result.splits["test"]) == 1


def test_images_that_would_need_more_disk_than_is_free_are_refused_with_a_hint(tmp_path):
    build_tree(tmp_path / "tree")
    with pytest.raises(
        DatasetError,
        match=f"6 images of 10000000x10000000 need .* GiB of disk space in '{tmp_path / 'stage'}'"
        ".* are free.*dataset.image_size",
    ):
        read_imagefolder(tmp_path / "tree", image_size=10_000_000, staging=tmp_path / "stage")
    assert list((tmp_path / "stage").iterdir()) == []  # refused before anything was written


def test_encoded_files_are_handed_to_threads_in_batches_bounded_by_bytes(tmp_path, monkeypatch):
    batches = []
    decode_batch = imagefolder._Decoder.decode_batch

    def recording(self, batch):
        batches.append(sum(len(data) for _, data in batch))
        decode_batch(self, batch)

    build_tree(tmp_path / "tree")
    monkeypatch.setattr(imagefolder, "BATCH_SIZE", 10_000)
    monkeypatch.setattr(imagefolder, "BATCH_BYTES", 1)
    monkeypatch.setattr(imagefolder._Decoder, "decode_batch", recording)
    read_imagefolder(tmp_path / "tree", image_size=8, workers=2)
    assert len(batches) == 6  # one image each, not one batch of all six


def test_a_cifar10_pickle_cannot_construct_an_array_of_its_own_size(cifar_folder):
    """numpy.ndarray((N, 3072), 'u1') in a pickle would allocate N x 3 KB from a few bytes."""
    folder, _ = cifar_folder

    class Allocating:
        def __reduce__(self):
            return (np.ndarray, ((2, 3072), "u1"))

    batch = {b"data": Allocating(), b"labels": [0, 1]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_2.*numpy.ndarray.* not allowed"):
        read_cifar10(folder)


def test_a_cifar10_pickle_declaring_a_petabyte_is_a_dataset_error(cifar_folder):
    folder, _ = cifar_folder
    declared = (2**50).to_bytes(8, "little")
    (folder / "data_batch_5").write_bytes(b"\x80\x04\x8e" + declared + b"short")  # BINBYTES8
    with pytest.raises(DatasetError, match="Cannot unpickle '.*data_batch_5'"):
        read_cifar10(folder)


def test_an_stl10_file_larger_than_the_release_allows_is_refused_before_reading(
    tmp_path, monkeypatch
):
    write_stl_folder(tmp_path / "stl10_binary")  # 4 unlabeled images
    monkeypatch.setattr(stl10, "MAX_IMAGES_PER_FILE", 3)
    with pytest.raises(DatasetError, match="unlabeled_X.bin' has 110,592 bytes, more than"):
        read_stl10(tmp_path / "stl10_binary")


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR-10 files are
    written: loaded with ``encoding="bytes"``, numpy's dtype names and byte orders are bytes."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def test_cifar10_reads_python2_pickles_like_the_official_files(cifar_folder):
    folder, batches = cifar_folder
    for name, batch in batches.items():
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(batch)
        assert b"X\x02\x00\x00\x00u1" not in buffer.getvalue()  # no Python 3 str anywhere
        (folder / name).write_bytes(buffer.getvalue())
    check_cifar(read_cifar10(folder), batches)


def test_a_cifar10_pickle_with_damaged_numpy_state_is_read_or_refused_cleanly(cifar_folder):
    """dtype flags 63 made numpy raise SystemError (and could do worse): the state is not
    passed to numpy as it is, only a dtype rebuilt from its checked name."""
    folder, batches = cifar_folder
    data = pickle.dumps(batches["data_batch_1"], protocol=2)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # elsize, alignment, flags of the dtype
    assert data.count(flags) == 1
    (folder / "data_batch_1").write_bytes(data.replace(flags, flags[:-2] + b"\x3ft"))
    check_cifar(read_cifar10(folder), batches)


@pytest.mark.parametrize(
    ("original", "damaged", "expected"),
    [
        (b"latin1", b"latkn1", "encoding 'latkn1' is not allowed"),
        (b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00O8", r"numpy.dtype\('O8'\) is not allowed"),
    ],
)
def test_a_cifar10_pickle_naming_other_codecs_or_dtypes_is_a_dataset_error(
    cifar_folder, original, damaged, expected
):
    folder, batches = cifar_folder
    data = pickle.dumps(batches["data_batch_1"], protocol=2)
    assert original in data
    (folder / "data_batch_1").write_bytes(data.replace(original, damaged, 1))
    with pytest.raises(DatasetError, match=f"data_batch_1.*{expected}"):
        read_cifar10(folder)


def test_a_tar_cut_between_members_or_with_a_damaged_header_is_refused_not_read_in_part(tmp_path):
    """tarfile ends its listing quietly at a damaged header or at the end of the data, which
    read half a dataset as if it were whole; only the end-of-archive marker ends an archive."""
    build_tree(tmp_path / "tree")
    whole = tar_folder(tmp_path / "tree", tmp_path / "whole.tar", "w").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut_at = tar.getmembers()[5].offset  # a header boundary, past the first images
    (tmp_path / "cut.tar").write_bytes(whole[:cut_at])
    (tmp_path / "bad.tar").write_bytes(whole[:cut_at] + b"\x01" * 512 + whole[cut_at + 512 :])
    with pytest.raises(DatasetError, match="cut.tar'.* truncated"):
        read_imagefolder(tmp_path / "cut.tar")
    with pytest.raises(DatasetError, match=f"bad.tar'.* header at byte {cut_at:,} is damaged"):
        read_imagefolder(tmp_path / "bad.tar")
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    write_cifar_folder(cifar)
    packed_cifar = tar_folder(cifar.parent, tmp_path / "cifar.tar", "w").read_bytes()
    with tarfile.open(tmp_path / "cifar.tar") as tar:
        cut_at = tar.getmembers()[-1].offset
    (tmp_path / "cifar_cut.tar").write_bytes(packed_cifar[:cut_at])
    with pytest.raises(DatasetError, match="cifar_cut.tar'.* truncated"):
        read_cifar10(tmp_path / "cifar_cut.tar")


def test_a_tar_gz_whose_checksum_fails_is_refused_though_its_end_marker_came_first(tmp_path, monkeypatch):
    """tarfile stops at the end marker, before the gzip stream's CRC-32: a member's bytes changed
    inside a valid stream (here: a pixel of an uncompressed BMP) were read as good."""
    build_tree(tmp_path / "tree")
    save(tmp_path / "tree/train/cat/flat.bmp", np.zeros((8, 8, 3), np.uint8))
    plain = tar_folder(tmp_path / "tree", tmp_path / "plain.tar", "w").read_bytes()
    with tarfile.open(tmp_path / "plain.tar") as tar:
        bmp = tar.getmember("train/cat/flat.bmp")
    changed = bytearray(plain)
    changed[bmp.offset_data + bmp.size - 1] ^= 0xFF  # the last pixel's byte: still a valid BMP
    archive = tmp_path / "changed.tar.gz"
    archive.write_bytes(gzip.compress(bytes(changed))[:-8] + gzip.compress(plain)[-8:])  # the old CRC
    with pytest.raises(DatasetError, match="changed.tar.gz'.*CRC check failed"):
        read_imagefolder(archive)

    monkeypatch.setattr(archive_module, "MAX_SINGLE_READ", 16384)
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(gzip.compress(plain + bytes(32768)))  # a bomb of zeros after the end marker
    with pytest.raises(DatasetError, match="padded.tar.gz'.* more than 16,384 bytes follow the end"):
        read_imagefolder(padded)


def test_an_image_declaring_ten_billion_pixels_is_refused_before_decoding(tmp_path):
    """A PNG's header can declare 100,000 x 100,000 pixels in a few bytes; Pillow's bomb
    limit must stop it before 30 GB are allocated, and the error must name the file."""
    import struct
    import zlib

    build_tree(tmp_path / "tree")
    path = tmp_path / "tree/train/cat/bomb.png"
    save(path, np.zeros((1, 1, 3), np.uint8))
    data = bytearray(path.read_bytes())
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", 100_000, 100_000)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bomb.png'.*DecompressionBombError.*on_bad_image=skip"):
        read_imagefolder(tmp_path / "tree", image_size=8, workers=1)
    assert read_imagefolder(tmp_path / "tree", image_size=8, on_bad_image="skip").skipped == [
        "train/cat/bomb.png"
    ]
