"""What the engine trains on, and in which order: images, validation views, epoch batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from aavae.common.batches import batch_shape
from aavae.data.imageset import ImageSet
from aavae.data.splits import paper_random_split


@dataclass(frozen=True)
class TrainingImages:
    """What the engine trains on: uint8 N x H x W x C images with labels (-1 = none)."""

    images: np.ndarray | Tensor
    labels: np.ndarray | Tensor


@dataclass(frozen=True)
class ValidationViews:
    """A fixed, seeded set of views of held-out images, so val loss compares across runs."""

    views: np.ndarray | Tensor  # uint8 N x H x W x C
    originals: np.ndarray | Tensor  # uint8 N x H x W x C
    labels: np.ndarray | Tensor


def as_tensor(array: np.ndarray | Tensor) -> Tensor:
    """A tensor over the array's memory (no copy of a contiguous, writable array)."""
    if isinstance(array, Tensor):
        return array
    array = np.asarray(array)
    if not array.flags.writeable:
        # Memory-mapped .npy files open read-only; torch wants writable memory even for
        # reads, and warns otherwise. One copy, made where the data leaves the catalog.
        array = np.array(array)
    return torch.from_numpy(np.ascontiguousarray(array))


def epoch_order(size: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """This epoch's batches as an int64 (batches, batch) table of image indices, from (seed,
    epoch) alone, so a resumed run sees exactly the batches an uninterrupted one would."""
    batches, per_batch = batch_shape(size, batch_size)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator)
    return order[: batches * per_batch].view(batches, per_batch)


def available_ram() -> int:
    """Bytes of memory the system could hand out now (MemAvailable), 8 GiB where unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def fits_on_device(images: np.ndarray | Tensor, device: torch.device) -> bool:
    """Whether the training images should live on ``device``: under half its free memory (a
    quarter of the free RAM on a CPU, where 'on the device' means a copy of the memory-mapped
    files in RAM)."""
    size = images.nbytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return size < free / 2
    return size < available_ram() / 4


def to_device(images: np.ndarray | Tensor, device: torch.device, chunk: int = 4096) -> Tensor:
    """All training images as one uint8 tensor on ``device``, copied a chunk at a time (a memory
    map is never read whole into host memory)."""
    if isinstance(images, Tensor):
        return images.to(device)
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = torch.from_numpy(np.array(images[start:start + chunk]))
    return out


def training_images(train: ImageSet, unlabeled: ImageSet, split: str, holdout: int) -> TrainingImages:
    """The images pretraining sees, as ``pretrain.training_split`` and ``unlabeled_holdout`` say.
    The unlabeled images held out are the paper's (``paper_random_split``, seed 42 whatever
    ``pretrain.seed``), the ones its STL-10 runs validated on; ``train`` arrives with the
    validation images already held out (``dataset.val_holdout``, at ingest)."""
    split = _resolved(split, unlabeled, holdout)
    if split == "train":
        return TrainingImages(np.asarray(train.images), np.asarray(train.labels))
    images, labels = np.asarray(unlabeled.images), np.asarray(unlabeled.labels)
    if holdout:
        kept, _ = paper_random_split(len(unlabeled), holdout)
        images, labels = images[kept], labels[kept]
    if split == "unlabeled":
        return TrainingImages(images, labels)
    return TrainingImages(np.concatenate([images, np.asarray(train.images)]),
                          np.concatenate([labels, np.asarray(train.labels)]))


def validation_images(val: ImageSet, unlabeled: ImageSet, split: str, holdout: int) -> ImageSet:
    """The images pretraining validates on, never the test split: the unlabeled images
    ``pretrain.unlabeled_holdout`` holds out where it trains on them (the paper's STL-10 validates
    on those: its ``VAE.step`` keeps the unlabeled half of each mixed validation batch), else the
    dataset's validation split (``images_val``, data/splits.py)."""
    if not holdout or _resolved(split, unlabeled, holdout) == "train":
        return val
    _, held_out = paper_random_split(len(unlabeled), holdout)
    return ImageSet(np.asarray(unlabeled.images[held_out]), np.asarray(unlabeled.labels[held_out]),
                    unlabeled.class_names, "unlabeled_holdout", unlabeled.fingerprint)


def _resolved(split: str, unlabeled: ImageSet, holdout: int) -> str:
    """``pretrain.training_split`` with ``auto`` resolved, once it is shown to be possible."""
    if split == "auto":
        split = "unlabeled+train" if len(unlabeled) else "train"
    if split == "train":
        return split
    if not len(unlabeled):
        raise ValueError(
            f"pretrain.training_split={split} needs the unlabeled split, which was not ingested: "
            "set dataset.unlabeled=true (STL-10) or pretrain.training_split=train"
        )
    if holdout >= len(unlabeled):
        raise ValueError(
            f"pretrain.unlabeled_holdout={holdout} leaves none of the {len(unlabeled)} unlabeled "
            "images to train on; hold out fewer"
        )
    return split
