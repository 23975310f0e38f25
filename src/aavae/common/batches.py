"""How a set of images is cut into batches: one rule for pretraining and the paper's probe."""

from __future__ import annotations


def batch_shape(size: int, batch_size: int) -> tuple[int, int]:
    """(batches per epoch, images per batch): full batches of one size, so a compiled step stays
    compiled and a CUDA graph replays (the images past the last one are seen in other epochs);
    fewer images than a batch are one batch. The paper's loaders (``drop_last=True``) cut so."""
    if size < 1:
        raise ValueError("there are no training images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if size < batch_size:
        return 1, size
    return size // batch_size, batch_size
