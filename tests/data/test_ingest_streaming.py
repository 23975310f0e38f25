"""Ingest streams decoded images into .npy files on disk (issue #15): memory stays bounded,
results equal the in-memory decoding, and staging files never outlive a run, good or bad."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError as KedroDatasetError
from PIL import Image

from aavae.data import imagefolder, staging
from aavae.data.card import content_sha256
from aavae.data.errors import DatasetError
from aavae.data.imagefolder import read_imagefolder
from aavae.data.imageset import ImageSet, load_imageset, save_imageset
from aavae.data.staging import NpyRows, npy_header
from aavae.kedro_ext.datasets import ImageSetDataset
from tests.conftest import PROJECT_ROOT
from tests.helpers.datasets import build_tree, save, tar_folder

CLASSES = ("cat", "dog")


def staged_entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def tree_with_bad_images(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """build_tree's images plus undecodable files before, between and after good ones, so
    squeezing them out moves rows across runs; returns the images expected per split."""
    expected = build_tree(root)
    for bad in ("train/cat/0_first.png", "train/dog/c2_between.jpg", "test/dog/z_last.webp"):
        (root / bad).write_bytes(b"\x89PNG not an image at all")
    return {split: (np.stack(images), labels) for split, (images, labels) in expected.items()}


@pytest.fixture
def tiny_chunks(monkeypatch):
    """One row per compaction and hashing chunk, two images per batch."""
    monkeypatch.setattr(staging, "CHUNK_BYTES", 8 * 8 * 3)
    monkeypatch.setattr(imagefolder, "BATCH_SIZE", 2)


# -- the same images, labels, class names and fingerprint as decoding in memory -------------


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
def test_streamed_ingest_with_skipped_images_equals_decoding_in_memory(tmp_path, tiny_chunks, form):
    expected = tree_with_bad_images(tmp_path / "tree")
    path = tmp_path / "tree" if form == "folder" else tar_folder(tmp_path / "tree", tmp_path / "d.tar.gz")
    result = read_imagefolder(
        path, image_size=8, on_bad_image="skip", workers=2, staging=tmp_path / "stage"
    )
    assert result.skipped == ["test/dog/z_last.webp", "train/cat/0_first.png", "train/dog/c2_between.jpg"]
    in_memory = {}
    for split, (images, labels) in expected.items():
        streamed = result.splits[split]
        assert isinstance(streamed.images, np.memmap) and not streamed.images.flags.writeable
        np.testing.assert_array_equal(streamed.images, images)
        np.testing.assert_array_equal(streamed.labels, labels)
        assert streamed.class_names == CLASSES and streamed.split == split
        in_memory[split] = ImageSet(images.copy(), np.asarray(labels), CLASSES, split)
    # hashed by reading the staged files in one-row chunks, it is the in-memory fingerprint
    assert result.sha256 == content_sha256(in_memory)
    assert result.sha256 == content_sha256({s: ImageSet(np.array(i.images), i.labels, i.class_names, s)
                                            for s, i in result.splits.items()})


def test_a_tree_without_bad_images_gets_the_fingerprint_its_arrays_have(tmp_path):
    build_tree(tmp_path / "tree")
    result = read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    copies = {s: ImageSet(np.array(i.images), i.labels, i.class_names, s) for s, i in result.splits.items()}
    assert result.sha256 == content_sha256(copies)
    assert type(copies["train"].images) is np.ndarray  # the in-memory path of content_sha256


# -- staging files: moved into place on save, gone after success and after failure ----------


def project(tmp_path: Path, monkeypatch) -> Path:
    """A folder laid out like a Kedro project's data/, as the working directory."""
    for layer in ("02_intermediate", "03_primary"):
        (tmp_path / "project" / "data" / layer).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project" / "data"


def run_ingest(tree: Path, **params) -> None:
    """The ingest node and the catalog's saves, as `kedro run --pipeline ingest` runs them."""
    from aavae.pipelines.ingest.nodes import ingest

    train, test, unlabeled, _, _ = ingest({"name": "imagefolder", "path": str(tree), "image_size": 8, **params})
    for name, imageset in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        ImageSetDataset(f"data/03_primary/images_{name}").save(imageset)


def test_saving_moves_the_staged_file_into_place_and_leaves_no_staging_behind(tmp_path, monkeypatch):
    data = project(tmp_path, monkeypatch)
    build_tree(tmp_path / "tree")
    result = read_imagefolder(tmp_path / "tree", image_size=8)  # stages in ./data/02_intermediate
    (folder,) = (data / "02_intermediate").iterdir()
    assert folder.name.startswith(".aavae-staging.tmp-") and staged_entries(folder) == ["test.npy", "train.npy"]
    staged_inode = (folder / "train.npy").stat().st_ino
    train = result.splits["train"]
    save_imageset(train, data / "03_primary" / "images_train")
    saved = data / "03_primary" / "images_train" / "images.npy"
    assert saved.stat().st_ino == staged_inode  # renamed, not copied
    assert staged_entries(folder) == ["test.npy"]
    save_imageset(result.splits["test"], data / "03_primary" / "images_test")
    assert staged_entries(data / "02_intermediate") == []  # the emptied folder is removed too
    np.testing.assert_array_equal(load_imageset(saved.parent).images, train.images)
    # the set still maps the file it was read into, now under its new name: saving it
    # elsewhere links that file instead of writing it again
    save_imageset(train, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "images.npy").stat().st_ino == staged_inode


def test_the_ingest_node_with_its_catalog_leaves_no_staging_files(tmp_path, monkeypatch):
    data = project(tmp_path, monkeypatch)
    tree_with_bad_images(tmp_path / "tree")
    run_ingest(tmp_path / "tree", on_bad_image="skip")
    assert staged_entries(data / "02_intermediate") == []
    assert load_imageset(data / "03_primary" / "images_train").images.shape == (4, 8, 8, 3)


def test_a_result_that_is_never_saved_deletes_its_staged_files(tmp_path):
    build_tree(tmp_path / "tree")
    result = read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    assert len(staged_entries(tmp_path / "stage")) == 1
    del result
    gc.collect()
    assert staged_entries(tmp_path / "stage") == []


def artifact_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_decoding_failure_mid_ingest_keeps_the_previous_artifact_and_no_staging(tmp_path, monkeypatch):
    data = project(tmp_path, monkeypatch)
    build_tree(tmp_path / "tree")
    run_ingest(tmp_path / "tree")
    before = artifact_bytes(data / "03_primary" / "images_train")
    for index in range(40):  # many batches are written before the bad image is reached
        save(tmp_path / f"tree/train/dog/x{index:02d}.png", np.full((8, 8, 3), index, np.uint8))
    (tmp_path / "tree/train/dog/x20.png").write_bytes(b"\x89PNG broken")
    monkeypatch.setattr(imagefolder, "BATCH_SIZE", 1)
    with pytest.raises(DatasetError, match="Cannot decode image .*x20.png"):
        run_ingest(tmp_path / "tree")
    assert artifact_bytes(data / "03_primary" / "images_train") == before
    assert staged_entries(data / "02_intermediate") == []
    assert staged_entries(data / "03_primary") == ["images_test", "images_train", "images_unlabeled"]


def test_a_save_failing_after_the_move_keeps_the_previous_artifact_and_no_staging(tmp_path, monkeypatch):
    from aavae.data import imageset as imageset_module

    data = project(tmp_path, monkeypatch)
    build_tree(tmp_path / "tree")
    run_ingest(tmp_path / "tree")
    before = artifact_bytes(data / "03_primary" / "images_train")
    save(tmp_path / "tree/train/cat/new.png", np.zeros((8, 8, 3), np.uint8))  # other images

    def failing_save(path, array):  # images.npy was moved into place; labels.npy fails
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(imageset_module.np, "save", failing_save)
    with pytest.raises(KedroDatasetError, match="(?s)images_train.*No space left"):
        run_ingest(tmp_path / "tree")
    monkeypatch.undo()
    gc.collect()  # the test split was read but never saved: its staged file goes with it
    assert artifact_bytes(data / "03_primary" / "images_train") == before
    assert staged_entries(data / "02_intermediate") == []
    assert staged_entries(data / "03_primary") == ["images_test", "images_train", "images_unlabeled"]


def test_a_failing_final_rename_puts_the_previous_artifact_back(tmp_path, monkeypatch):
    build_tree(tmp_path / "tree")
    first = read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    save_imageset(first.splits["train"], tmp_path / "images_train")
    before = artifact_bytes(tmp_path / "images_train")
    second = read_imagefolder(tmp_path / "tree", image_size=4, staging=tmp_path / "stage")
    rename = Path.rename

    def failing_rename(self, target):  # the new folder's rename fails, putting the old back not
        if self.name.startswith(".images_train.") and not self.name.endswith(".old"):
            raise OSError(5, "Input/output error")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output error"):
        save_imageset(second.splits["train"], tmp_path / "images_train")
    monkeypatch.undo()
    assert artifact_bytes(tmp_path / "images_train") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_train", "stage", "tree"]


@pytest.mark.slow
def test_a_staging_folder_left_by_a_killed_process_is_removed_by_the_next_read(tmp_path):
    from aavae.common.liveness import temporary_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    mine = temporary_prefix("aavae-staging")  # .aavae-staging.tmp-<pid>-<host>-
    stale = tmp_path / "stage" / (mine.replace(f"-{os.getpid()}-", f"-{dead}-") + "abc")
    live = tmp_path / "stage" / (mine.replace(f"-{os.getpid()}-", f"-{os.getppid()}-") + "def")
    elsewhere = tmp_path / "stage" / (mine.replace(f"-{os.getpid()}-", f"-{dead}-another_") + "ghi")  # host
    not_staging = tmp_path / "stage" / (mine.replace(f"-{os.getpid()}-", f"-{dead}-").replace("aavae-staging", "x") + "j")
    for folder in (stale, live, elsewhere, not_staging):
        folder.mkdir(parents=True)
        (folder / "train.npy").write_bytes(b"left behind")
    build_tree(tmp_path / "tree")
    result = read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    assert not stale.exists()
    assert live.exists() and elsewhere.exists()  # a live process's, another host's: kept
    assert not_staging.exists(), "the staging root may be /tmp: only staging folders are swept"
    del result


@pytest.mark.slow
def test_the_staging_folder_of_a_killed_writer_not_yet_reaped_is_removed(tmp_path):
    """A zombie keeps its PID in the process table until its parent reaps it: still gone."""
    from aavae.common.liveness import temporary_prefix

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    mine = temporary_prefix("aavae-staging")
    stale = tmp_path / "stage" / (mine.replace(f"-{os.getpid()}-", f"-{child.pid}-") + "abc")
    stale.mkdir(parents=True)
    build_tree(tmp_path / "tree")
    read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    assert not stale.exists()
    child.wait()


def test_saving_a_loaded_set_whose_file_was_replaced_since_writes_what_it_maps(tmp_path):
    """A map remembers the file it maps: linking the path after another artifact was renamed
    over it would save the new images under the old set's name."""
    old = ImageSet(np.full((3, 4, 4, 3), 1, np.uint8), np.zeros(3, np.int64), ("c",), "train")
    new = ImageSet(np.full((3, 4, 4, 3), 2, np.uint8), np.zeros(3, np.int64), ("c",), "train")
    save_imageset(old, tmp_path / "a")
    loaded = load_imageset(tmp_path / "a")
    save_imageset(new, tmp_path / "a")  # same shape, another file at the same path
    save_imageset(loaded, tmp_path / "b")
    assert (load_imageset(tmp_path / "b").images == 1).all()
    save_imageset(load_imageset(tmp_path / "a"), tmp_path / "c")
    assert (tmp_path / "c/images.npy").stat().st_ino == (tmp_path / "a/images.npy").stat().st_ino


# -- the .npy writer ------------------------------------------------------------------------


def test_rows_written_out_of_order_and_compacted_in_one_row_chunks_load_as_numpy_reads_them(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(staging, "CHUNK_BYTES", 1)
    rows = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    writer = NpyRows(tmp_path / "x.npy", rows.shape)
    for index in (9, 0, 5, 3, 6, 8, 7, 1, 2, 4):
        writer.write(index, rows[index])
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), rows)
    kept = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1], bool)
    writer.compact(kept)
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), rows[kept])
    assert (tmp_path / "x.npy").stat().st_size == writer.header_bytes + rows[kept].nbytes


@pytest.mark.parametrize("shape", [(200_000, 96, 96, 3), (7, 1, 1, 3), (0, 32, 32, 3)])
def test_a_header_keeps_its_length_when_the_first_axis_shrinks(shape):
    """What compact's rewrite in place relies on: numpy pads a header for any first axis."""
    assert len(npy_header(shape, np.uint8)) == len(npy_header((10**18, *shape[1:]), np.uint8))


def test_a_full_disk_while_writing_names_the_file_and_what_to_do(tmp_path, monkeypatch):
    build_tree(tmp_path / "tree")

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DatasetError, match=r"Cannot write decoded images to '.*stage/.*\.npy'.*"
                       r"No space left.*Free some disk space"):
        read_imagefolder(tmp_path / "tree", image_size=8, staging=tmp_path / "stage")
    assert staged_entries(tmp_path / "stage") == []


# -- memory does not grow with the number of images ------------------------------------------

PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from aavae.data.imagefolder import read_imagefolder
    from aavae.data.imageset import save_imageset

    def kb(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])

    tree, work, side = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    try:  # the peak from here on; else since start, which only overstates it
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = kb("VmRSS")
    result = read_imagefolder(tree, image_size=side, staging=work / "stage")
    for split, imageset in result.splits.items():
        save_imageset(imageset, work / split)
    print(sum(len(s) for s in result.splits.values()), (kb("VmHWM") - baseline) * 1024)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_memory_of_ingesting_200_mb_of_images_stays_far_below_their_size(tmp_path):
    """4,000 tiny PNGs brought to 128 x 128 are 197 MB of pixels: an array of them all in
    memory (what ingest allocated before) would exceed the bound."""
    count, side = 4_000, 128
    rng = np.random.default_rng(0)
    for index in range(count):
        split = "test" if index % 5 == 0 else "train"
        path = tmp_path / "tree" / split / f"c{index % 4}" / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
    full_bytes = count * side * side * 3
    assert full_bytes > 180 * 1024**2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "tree"), str(tmp_path), str(side)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    images, peak = map(int, result.stdout.split())
    assert images == count
    assert peak < 100 * 1024**2, f"peak {peak / 1024**2:.0f} MB above baseline for {full_bytes / 1024**2:.0f} MB of images"
    assert np.load(tmp_path / "train" / "images.npy", mmap_mode="r").shape == (3_200, side, side, 3)
