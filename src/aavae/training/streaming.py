"""Batches streamed from host memory when the training images do not fit on the device.

A background thread gathers each step's images from the (memory-mapped) array by the epoch's
order, a few steps ahead, into pinned memory on CUDA; before each step they are copied into
fixed device buffers with ``non_blocking``, overlapping the previous step, which a compiled step
or CUDA graph reads every time (torch's pinned allocator keeps a block until its copy has run).
Views are still made on the device, with device-resident training's order and random numbers.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

DEPTH = 3  # batches gathered ahead of the step


class HostBatches:
    """Stage one epoch's batches (this rank's share) into ``images``/``labels`` device buffers."""

    def __init__(self, source: np.ndarray, labels: np.ndarray, local: slice,
                 batch_shape: tuple[int, ...], device: torch.device) -> None:
        self.source, self.labels_host, self.local, self.device = source, labels, local, device
        self.images = torch.empty(batch_shape, dtype=torch.uint8, device=device)
        self.labels = torch.empty(batch_shape[0], dtype=torch.long, device=device)
        self._gatherer = ThreadPoolExecutor(1, thread_name_prefix="aavae-host-batches")
        self._ahead: deque[Future[tuple[Tensor, Tensor]]] = deque()
        self._rows = iter(())

    def start_epoch(self, order: Tensor, first_step: int) -> None:
        """Begin gathering rows ``first_step``.. of ``order`` (steps x global batch, on the host)."""
        self.stop()
        self._rows = iter(order[first_step:, self.local].numpy())
        for _ in range(DEPTH):
            self._gather_next()

    def _gather_next(self) -> None:
        if (index := next(self._rows, None)) is not None:
            self._ahead.append(self._gatherer.submit(self._gather, index))

    def _gather(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        batch = torch.from_numpy(np.asarray(self.source[index])), torch.from_numpy(self.labels_host[index])
        return tuple(t.pin_memory() for t in batch) if self.device.type == "cuda" else batch  # type: ignore[return-value]

    def next(self) -> None:
        """Copy the next gathered batch into the device buffers (asynchronously on CUDA)."""
        images, labels = self._ahead.popleft().result()
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self._gather_next()

    def stop(self) -> None:
        """Drop the batches gathered ahead (one being gathered finishes, unread)."""
        while self._ahead:
            self._ahead.pop().cancel()
        self._rows = iter(())
