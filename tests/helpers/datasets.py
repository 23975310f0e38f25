"""Real dataset files written by the tests: image trees, archives, the CIFAR-10 python format."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def cifar_batch(rng: np.random.Generator, count: int) -> dict:
    return {
        b"batch_label": b"a fake batch",
        b"labels": [int(label) for label in rng.integers(0, 10, count)],
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(count)],
    }


def tar_folder(folder: Path, archive: Path, mode: str = "w:gz", top: str | None = None) -> Path:
    """Pack the contents of ``folder`` (inside ``top/`` if given) into a tar archive."""
    with tarfile.open(archive, mode) as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=f"{top}/{child.name}" if top else child.name)
    return archive


def write_cifar_folder(folder: Path, per_batch: int = 3, test_count: int = 4) -> dict[str, dict]:
    """The official file set with a few images per batch; returns the batches written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(rng, per_batch) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, test_count)
    for name, batch in batches.items():
        (folder / name).write_bytes(
            pickle.dumps(batch, protocol=2)
        )  # as Python 3 writes protocol 2
    meta = {b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    (folder / "readme.html").write_text("<p>not a batch</p>")
    return batches


def cifar_expected(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Images as N x 32 x 32 x 3: channel c of pixel (y, x) is data[c * 1024 + y * 32 + x]."""
    data = np.concatenate([batch[b"data"] for batch in batches])
    images = np.zeros((len(data), 32, 32, 3), np.uint8)
    for channel in range(3):
        images[..., channel] = data[:, channel * 1024 : (channel + 1) * 1024].reshape(-1, 32, 32)
    labels = np.concatenate([batch[b"labels"] for batch in batches])
    return images, labels


def save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def build_tree(root: Path) -> dict[str, tuple[list[np.ndarray], list[int]]]:
    """A small tree with PNG, JPEG, BMP and WebP, grey and RGBA images, plus files to ignore.

    Returns per split the images expected in reading order (sorted paths) and their labels.
    """
    rng = np.random.default_rng(1)
    rgb = lambda: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # noqa: E731
    a, e = rgb(), rgb()
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    save(root / "train/cat/a.png", a)
    save(root / "train/cat/b.JPG", rgb(), format="JPEG", quality=90)
    save(root / "train/dog/c.png", grey)
    save(root / "train/dog/d.PNG", rgba)
    save(root / "test/cat/e.bmp", e)
    save(root / "test/dog/f.webp", rgb(), format="WEBP", lossless=True)
    for junk in (".DS_Store", "train/cat/._a.png", "__MACOSX/train/cat/._a.png", ".hidden/x.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"not an image")
    (root / "README.txt").write_text("my dataset")
    (root / "train/cat/notes.txt").write_text("not an image either")
    decoded_jpeg = np.asarray(Image.open(root / "train/cat/b.JPG").convert("RGB"))
    webp = np.asarray(Image.open(root / "test/dog/f.webp").convert("RGB"))
    return {
        "train": (
            [a, decoded_jpeg, np.repeat(grey[..., None], 3, axis=2), rgba[..., :3]],
            [0, 0, 1, 1],
        ),
        "test": ([e, webp], [0, 1]),
    }


def two_class_folder(root: Path, side: int = 20, per_class: int = 6) -> Path:
    """train/ and test/ of two classes of coloured squares, as PNG files."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            for index in range(count):
                pixels = np.clip(rng.normal(colour, 30, (side, side, 3)), 0, 255).astype(np.uint8)
                save(root / split / f"class{label}" / f"{index}.png", pixels)
    return root
