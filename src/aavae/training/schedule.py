"""The learning-rate schedule: linear warm-up, then cosine, linear or constant.

Two forms of one formula: :func:`warmup_then_decay` on Python numbers (readable, used in
tests and by anything that wants a curve) and :func:`schedule_factor` on a device tensor, so
the step computes its own learning rate without a host round trip and a CUDA graph replays it.

The warm-up is the paper's (its ``linear_warmup_decay`` behind a per-step ``LambdaLR``):
step ``s`` (0-based: the optimisation steps done before it) trains at ``s / warmup`` of the
learning rate, so the first step's rate is 0 (Adam's moments still take its gradient) and
the full rate is reached at step ``warmup``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

SCHEDULES = ("cosine", "linear", "constant")


def warmup_then_decay(warmup_steps: int, total_steps: int, schedule: str) -> Callable[[int], float]:
    """Per-step learning-rate factor: linear warm-up, then cosine, linear or constant."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return step / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def schedule_factor(step: Tensor, warmup_steps: Tensor, total_steps: Tensor, schedule: str) -> Tensor:
    """:func:`warmup_then_decay` for a 0-dim step tensor; warm-up and total steps are tensors
    too, so a run can fit its schedule to a time budget after it has started."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule '{schedule}' is unknown; choose one of {SCHEDULES}")
    step = step.to(torch.float32)
    warmup = warmup_steps.to(torch.float32)
    warming = step / warmup.clamp(min=1)
    if schedule == "constant":
        decayed = torch.ones_like(step)
    else:
        span = (total_steps.to(torch.float32) - warmup).clamp(min=1)
        progress = ((step - warmup) / span).clamp(0.0, 1.0)
        if schedule == "cosine":
            decayed = 0.5 * (1 + torch.cos(math.pi * progress))
        else:
            decayed = 1.0 - progress
    return torch.where(step < warmup, warming, decayed)
