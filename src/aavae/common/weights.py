"""The one way this project reads a torch file: tensors and plain containers only.

``torch.load(weights_only=False)`` unpickles whatever the file names, which runs code; every
bundle, checkpoint and registered model is read here instead, onto the CPU. A file that needs
more than weights-only loading allows (the paper's Lightning checkpoints) goes through
:mod:`aavae.models.checkpoint_reading`'s restricted unpickler, which falls back from here.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def load_weights(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU; ``mmap`` maps tensors from the file
    instead of reading them (a checkpoint whose step counter alone is wanted)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
