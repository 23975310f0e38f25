"""Data-parallel pretraining on Lightning's DDP, with the step reducing its own gradients.

Lightning's DDP wrapper arms its gradient hooks *after* the module's forward returns; this
step runs forward, backward and the update in one call (so a CUDA graph can capture it), so
they would never be armed. :class:`StepOwnsGradients` is the DDP strategy without the wrapper
(it starts or joins the processes and broadcasts rank 0's weights); the step all-reduces its
gradients itself (:func:`all_reduce_mean`: one flat collective, capturable on NCCL).
``pretrain.batch_size`` is the *global* batch: every rank builds the same epoch order and draws
the same random numbers for all of it, then works on its own contiguous slice, so averaged
gradients equal one process's on the whole batch (exactly so with ``sync_batchnorm``).
"""

from __future__ import annotations

import ctypes
import signal
import sys

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor


class StepOwnsGradients(DDPStrategy):
    """DDP without the DistributedDataParallel wrapper: the training step reduces gradients."""

    def configure_ddp(self) -> None:
        assert self.model is not None
        _sync_module_states(self.model)  # every rank starts from rank 0's weights and buffers


def all_reduce_mean(tensors: list[Tensor]) -> None:
    """Average ``tensors`` over all processes in place, as one flat collective."""
    if not tensors:
        return
    flat = torch._utils._flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for tensor, reduced in zip(tensors, torch._utils._unflatten_dense_tensors(flat, tensors), strict=True):
        tensor.copy_(reduced)


def in_several_processes() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` of all processes, so that every rank takes the same decision (a rank
    deciding alone would wait for the others in its next collective); host sync."""
    if not in_several_processes():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])


def die_with_parent() -> None:
    """Ask Linux to end this process when its parent dies (a spawned rank whose parent was
    killed must not train on, writing checkpoints beside the rerun). Best effort elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
