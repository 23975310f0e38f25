"""How a set of images is cut into batches: one rule for pretraining and the paper's probe."""

from __future__ import annotations


def batch_shape(size: int, batch_size: int) -> tuple[int, int]:
    """(batches per epoch, images per batch): full batches only, every batch the same size.

    A constant shape is what lets a compiled step stay compiled and a CUDA graph replay; the
    few images past the last full batch are seen in other epochs, in other orders. A dataset
    smaller than one batch trains on all of it as one batch. The paper's loaders
    (``drop_last=True``) cut the same way, its linear evaluation's test loader included.
    """
    if size < 1:
        raise ValueError("there are no training images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if size < batch_size:
        return 1, size
    return size // batch_size, batch_size
