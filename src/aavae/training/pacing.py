"""Decisions that depend on the step rate, taken by timing the first steps of a run:
``compile: auto`` on a CPU compiles the step when the eager steps left outlast compiling plus
running them compiled (:data:`AUTO_COMPILE_MINUTES`); ``schedule_to_time_limit`` ends the
warm-up and decay at the step count that fills the time limit. :class:`Pacer` only times and
decides (nothing once both are settled); the module applies it.

The compile decision times the steady eager step, not the first ones: the first bf16 steps of
the default run on an AVX512-BF16 CPU took ~16 s against ~2 s later (one-off kernel set-up),
and on a busy 2-core machine steps of 0.2 s took 1-17 s (threads spin while they wait for a
core). The first steps are a poor sample for the schedule's fit too (steps 3-7 ran at 1.3-1.5 s
against a steady 1.0 s in one run, at 1.03 s against 1.45 s in another): a fit on them alone
ended minutes early or was cut before its decay ended, so the fit is refined at
:data:`REFIT_AT` of the limit from the rate since the first fit (only the end of the decay moves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import torch

from aavae.training.distributed import max_over_ranks

# On a CPU compiling pays when the eager steps left outlast compiling plus the same steps compiled:
CPU_COMPILE_MINUTES = 4.0  # the default run's step compiled in 224 s on the 2-core AMX Xeon, cache empty
CPU_COMPILED_SPEEDUP = 1.15  # compiled over eager on that CPU (docs/performance.md: 77.6 against 67.3 images/s)
AUTO_COMPILE_MINUTES = CPU_COMPILE_MINUTES / (1 - 1 / CPU_COMPILED_SPEEDUP)  # about 31 minutes
COMPILE_DECISION_STEPS = 10  # eager steps timed before deciding (after the first, which sets up kernels)
FIT_TIMED_STEPS = 5  # steps timed before fitting the schedule to the time limit
TIME_FIT_SLACK = 0.97  # share of the time left that the fitted steps are planned to fill
REFIT_AT = (0.2, 0.5)  # shares of the time limit at which the fit is refined from the steady rate


class StepClock:
    """Wall clock and process CPU time (all threads) at the start of steps, each read after
    waiting for the device: a host round trip, so the pacer only ticks while a decision is
    pending (a handful of steps at the start of a run), never in the steady state."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def tick(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # deliberate: the clock reads finished work
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())

    def seconds_per_step(self, skip: int, steps: int) -> float | None:
        """Mean seconds of ``steps`` steps after the first ``skip`` ticks, once there are enough."""
        if len(self.times) < skip + steps + 1:
            return None
        window = self.times[skip:skip + steps + 1]
        return (window[-1] - window[0]) / steps

    def step_durations(self, skip: int) -> tuple[list[float], list[float]]:
        return ([after - before for before, after in pairwise(self.times[skip:])],
                [after - before for before, after in pairwise(self.cpu_times[skip:])])


def idle_seconds_per_step(wall: float, cpu: float | None, threads: int) -> float:
    """Seconds a step would take with the process's threads on cores of their own: its CPU time
    over the thread count, at most its wall time. Other processes' load stretches the wall time,
    not the CPU time (threads that spin while they wait for a core still add some)."""
    if cpu is None:
        return wall
    return min(wall, cpu / max(1, threads))


def steady_step_seconds(seconds: list[float]) -> float:
    """The steady time of a step among these step times: their lower quartile. The first steps
    pay one-off set-up and some are slowed by other processes; both make steps slower, never
    faster, so the fast end of the sample is the step's own rate."""
    return sorted(seconds)[len(seconds) // 4]


@dataclass(frozen=True)
class CompileDecision:
    """``compile: auto`` on a CPU: the choice and the measurement behind it."""

    compile: bool
    seconds_per_step: float  # the steady eager step (idle-equivalent on a CPU)
    minutes_left: float  # eager training left at that rate, capped by the time limit
    clock_range: tuple[float, float]  # the fastest and slowest timed step by the wall clock
    threads: int | None = None  # torch's CPU threads when CPU time was read, else None

    def describe(self) -> str:
        """One log line: what was measured, the choice, and how to make it yourself."""
        fastest, slowest = self.clock_range
        how = "by the clock" if self.threads is None else (
            f"by its CPU time over {self.threads} thread{'s' if self.threads > 1 else ''}, which other "
            "processes' load does not stretch")
        return (f"compile=auto: a steady eager step takes {self.seconds_per_step:.2f} s (the lower quartile "
                f"of {COMPILE_DECISION_STEPS} steps after the first, {how}; by the clock they took "
                f"{fastest:.2f}-{slowest:.2f} s); about {self.minutes_left:.1f} min of eager training left, "
                f"{'more' if self.compile else 'less'} than the {AUTO_COMPILE_MINUTES:.0f} min past which "
                f"compiling pays (about {CPU_COMPILE_MINUTES:.0f} min to compile for steps "
                f"{CPU_COMPILED_SPEEDUP:.2f}x as fast): {'compiling the step' if self.compile else 'staying eager'} "
                "(pretrain.compile=true or false chooses instead)")


@dataclass(frozen=True)
class ScheduleFit:
    total_steps: int
    seconds_per_step: float
    refined: bool = False  # a later fit from the steady rate: moves the end, keeps the warm-up


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
        self.refits_left = list(REFIT_AT) if self.fitting else []
        self.anchor: tuple[int, float] | None = None  # (step, time) of the first fit

    @property
    def settled(self) -> bool:
        return not (self.deciding_compile or self.fitting or self.refits_left)

    def before_step(self, step_number: int) -> CompileDecision | ScheduleFit | None:
        """Call at the start of every step; returns a decision on the step it is taken."""
        if self.settled:
            return None
        if not (self.deciding_compile or self.fitting):
            return self._refine(step_number)
        self.clock.tick()
        if self.deciding_compile:
            decision = self._decide_compile(step_number)
            if decision is not None:
                self.deciding_compile = False
                self.clock = StepClock(self.clock.device)  # the schedule's fit times steps anew
            return decision
        # The first timed step after compiling compiles the step: skip two ticks.
        seconds = self.clock.seconds_per_step(skip=2, steps=FIT_TIMED_STEPS)
        if seconds is None:
            return None
        self.fitting = False
        self.anchor = (step_number, self.clock.times[-1])
        return self._fit(step_number, seconds, self.clock.times[-1])

    def _decide_compile(self, step_number: int) -> CompileDecision | None:
        """Compile when the eager steps left, at the steady step time, outlast
        :data:`AUTO_COMPILE_MINUTES` (once :data:`COMPILE_DECISION_STEPS` are timed)."""
        if len(self.clock.times) < COMPILE_DECISION_STEPS + 2:
            return None
        walls, cpus = self.clock.step_durations(skip=1)
        # CPU time measures a CPU step's own work; on an accelerator the host mostly waits.
        threads = torch.get_num_threads() if self.clock.device.type == "cpu" else None
        steps = [wall if threads is None else idle_seconds_per_step(wall, cpu, threads)
                 for wall, cpu in zip(walls, cpus, strict=True)]
        # the slowest rank's: every rank compiles (and verifies, a collective) at the same step
        seconds = max_over_ranks(steady_step_seconds(steps), self.clock.device)
        minutes = (self.planned_steps - step_number) * seconds / 60
        if self.time_limit_minutes is not None:
            minutes = min(minutes, self.time_limit_minutes)
        return CompileDecision(minutes > AUTO_COMPILE_MINUTES, seconds, minutes, (min(walls), max(walls)), threads)

    def _refine(self, step_number: int) -> ScheduleFit | None:
        """At each share of :data:`REFIT_AT` of the limit, refit from the rate since the first fit
        (between refits the host clock only; the step that refits waits for the device once)."""
        assert self.time_limit_minutes is not None and self.anchor is not None
        limit = self.time_limit_minutes * 60
        if time.perf_counter() - self.started < self.refits_left[0] * limit:
            return None
        self.refits_left.pop(0)
        self.clock.tick()
        now = self.clock.times[-1]
        anchor_step, anchor_time = self.anchor
        if step_number <= anchor_step:
            return None
        fit = self._fit(step_number, (now - anchor_time) / (step_number - anchor_step), now)
        return ScheduleFit(fit.total_steps, fit.seconds_per_step, refined=True)

    def _fit(self, step_number: int, seconds: float, now: float) -> ScheduleFit:
        assert self.time_limit_minutes is not None
        left = self.time_limit_minutes * 60 - (now - self.started)
        # A little slack for validation and checkpoints at epoch ends.
        return ScheduleFit(step_number + max(1, int(TIME_FIT_SLACK * left / seconds)), seconds)
