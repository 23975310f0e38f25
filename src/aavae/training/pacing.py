"""Timing the first steps of a run, for the decisions that depend on the step rate."""

from __future__ import annotations

import time

import torch


class StepClock:
    """Timestamps taken at the start of steps, each after waiting for the device.

    Waiting costs a host round trip, so the module only ticks while a decision is pending
    (a handful of steps at the start of a run), never in the steady state.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def tick(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # deliberate: the clock reads finished work
        self.times.append(time.perf_counter())

    def reset(self) -> None:
        self.times.clear()

    def seconds_per_step(self, skip: int, steps: int) -> float | None:
        """Mean seconds of ``steps`` steps after the first ``skip`` ticks, once there are enough."""
        if len(self.times) < skip + steps + 1:
            return None
        window = self.times[skip:skip + steps + 1]
        return (window[-1] - window[0]) / steps
