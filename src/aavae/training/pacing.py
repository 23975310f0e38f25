"""Decisions that depend on the step rate, taken by timing the first steps of a run.

Two of them: ``compile: auto`` on a CPU (compile the step when eager training would last long
enough to pay for compiling), and ``schedule_to_time_limit`` (end the warm-up and decay with
the time limit, at the step count that fills it). :class:`Pacer` only times and decides;
the module applies what it decides. Nothing is timed once both are settled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

AUTO_COMPILE_MINUTES = 10.0  # on CPU, compile when eager training would last longer than this
COMPILE_DECISION_STEPS = 3  # eager steps timed before deciding (after the first, which warms up)
FIT_TIMED_STEPS = 5  # steps timed before fitting the schedule to the time limit
TIME_FIT_SLACK = 0.97  # share of the time left that the fitted steps are planned to fill


class StepClock:
    """Timestamps taken at the start of steps, each after waiting for the device.

    Waiting costs a host round trip, so the pacer only ticks while a decision is pending (a
    handful of steps at the start of a run), never in the steady state.
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


@dataclass(frozen=True)
class CompileDecision:
    compile: bool
    seconds_per_step: float
    minutes_left: float


@dataclass(frozen=True)
class ScheduleFit:
    total_steps: int
    seconds_per_step: float


class Pacer:
    """Times the first steps and says, once each, whether to compile and where the schedule ends."""

    def __init__(self, device: torch.device, decide_compile: bool, fit_schedule: bool,
                 time_limit_minutes: float | None, planned_steps: int) -> None:
        self.clock = StepClock(device)
        self.deciding_compile = decide_compile
        self.fitting = fit_schedule and time_limit_minutes is not None
        self.time_limit_minutes = time_limit_minutes
        self.planned_steps = planned_steps
        self.started = time.perf_counter()

    @property
    def settled(self) -> bool:
        return not (self.deciding_compile or self.fitting)

    def before_step(self, step_number: int) -> CompileDecision | ScheduleFit | None:
        """Call at the start of every step; returns a decision on the step it is taken."""
        if self.settled:
            return None
        self.clock.tick()
        if self.deciding_compile:
            seconds = self.clock.seconds_per_step(skip=1, steps=COMPILE_DECISION_STEPS)
            if seconds is None:
                return None
            minutes = (self.planned_steps - step_number) * seconds / 60
            if self.time_limit_minutes is not None:
                minutes = min(minutes, self.time_limit_minutes)
            self.deciding_compile = False
            self.clock.reset()
            return CompileDecision(minutes > AUTO_COMPILE_MINUTES, seconds, minutes)
        # The first timed step after compiling compiles the step: skip two ticks.
        seconds = self.clock.seconds_per_step(skip=2, steps=FIT_TIMED_STEPS)
        if seconds is None:
            return None
        assert self.time_limit_minutes is not None
        left = self.time_limit_minutes * 60 - (time.perf_counter() - self.started)
        self.fitting = False
        # A little slack for validation and checkpoints at epoch ends.
        return ScheduleFit(step_number + max(1, int(TIME_FIT_SLACK * left / seconds)), seconds)
