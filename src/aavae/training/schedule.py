"""The learning-rate schedule: linear warm-up, then cosine, linear or constant, computed on the
device from the step's own counters (no host round trip; a CUDA graph replays it). The warm-up
is the paper's (``linear_warmup_decay`` behind a per-step ``LambdaLR``; tests/training/test_recipes.py
compares them): step ``s`` (0-based) trains at ``s / warmup`` of the rate, so the first step's
is 0 (Adam's moments still take its gradient) and the full rate is reached at step ``warmup``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("cosine", "linear", "constant")


def schedule_factor(step: Tensor, warmup_steps: Tensor, total_steps: Tensor, schedule: str) -> Tensor:
    """The factor of the peak learning rate at a 0-dim ``step``; warm-up and total steps are
    tensors too, so a run can fit its schedule to a time budget after it has started."""
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
