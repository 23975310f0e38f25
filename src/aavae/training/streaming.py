"""Batches streamed from host memory when the training images do not fit on the device.

A background thread gathers each step's images from the (memory-mapped) arrays by the
epoch's order into pinned host memory; before each step the main thread copies the next
batch into fixed device buffers with ``non_blocking``, so the copy overlaps the previous
step's work and a compiled step or CUDA graph reads the same buffers every time. Views are
still made on the device. The order and the random numbers are those of device-resident
training, so both give the same losses.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from aavae.training.data import ImageArrays, gather_host

DEPTH = 3  # batches gathered ahead of the step (each holds a pinned buffer)


class HostBatches:
    """Stage one epoch's batches (this rank's share) into ``images``/``labels`` device buffers."""

    def __init__(self, source: ImageArrays | np.ndarray, labels: np.ndarray, local: slice,
                 batch_shape: tuple[int, ...], device: torch.device) -> None:
        self.source, self.labels_host, self.local, self.device = source, labels, local, device
        pin = device.type == "cuda"
        self.images = torch.empty(batch_shape, dtype=torch.uint8, device=device)
        self.labels = torch.empty(batch_shape[0], dtype=torch.long, device=device)
        self._free: queue.Queue = queue.Queue()
        for _ in range(DEPTH):
            buffers = (torch.empty(batch_shape, dtype=torch.uint8, pin_memory=pin),
                       torch.empty(batch_shape[0], dtype=torch.long, pin_memory=pin))
            self._free.put((buffers, None))
        self._ready: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start_epoch(self, order: Tensor, first_step: int) -> None:
        """Begin gathering rows ``first_step``.. of ``order`` (steps x global batch, on the host)."""
        self.stop()
        rows = order[first_step:, self.local].numpy()
        self._stop.clear()
        self._thread = threading.Thread(target=self._gather, args=(rows,), daemon=True,
                                        name="aavae-host-batches")
        self._thread.start()

    def _gather(self, rows: np.ndarray) -> None:
        for index in rows:
            (images, labels), copied = self._free.get()
            if copied is not None:
                copied.synchronize()  # the device has finished reading this pinned buffer
            if self._stop.is_set():
                self._free.put(((images, labels), None))
                return
            images.numpy()[:] = gather_host(self.source, index)
            labels.numpy()[:] = self.labels_host[index]
            self._ready.put((images, labels))

    def next(self) -> None:
        """Copy the next gathered batch into the device buffers (asynchronously on CUDA)."""
        images, labels = self._ready.get()
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        copied = None
        if self.device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record()
        self._free.put(((images, labels), copied))

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            while self._thread.is_alive():  # unblock a producer waiting for room or a buffer
                for drain in _drained(self._ready):
                    self._free.put((drain, None))
                self._thread.join(timeout=0.05)
        for drain in _drained(self._ready):
            self._free.put((drain, None))
        self._thread = None


def _drained(items: queue.Queue) -> Iterator:
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return

