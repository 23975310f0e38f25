"""Decisions that depend on the step rate, taken by timing the first steps of a run.

Two of them: ``compile: auto`` on a CPU (compile the step when eager training would last long
enough to pay for compiling), and ``schedule_to_time_limit`` (end the warm-up and decay with
the time limit, at the step count that fills it). :class:`Pacer` only times and decides;
the module applies what it decides. Nothing is timed once both are settled.

The compile decision reads the process's CPU time, not only the clock. Other processes on a
busy machine stretch a step's wall time (a 2-core CPU under other load measured 2.73 s an
eager step and decided on that), not the CPU time the step itself uses, and compiling costs
the same CPU work whatever the load. So the rule compares like with like: compile when the
eager steps left, at the step's CPU time spread over torch's threads
(:func:`idle_seconds_per_step`), come to more than :data:`AUTO_COMPILE_MINUTES`. The log
states the measurement, the choice and how to override it (:meth:`CompileDecision.describe`).

The first steps of a run are a poor sample of its step rate (on the 2-core CPU, steps 3-7 ran
at 1.3-1.5 s against a steady 1.0 s in one run, and at 1.03 s against a steady 1.45 s in
another), so a schedule fitted on them alone ends minutes early or is cut by the limit before
its decay ends. The fit is therefore refined at :data:`REFIT_AT` of the time limit from the
rate since the first fit; only the end of the cosine moves (the warm-up is over by then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

AUTO_COMPILE_MINUTES = 10.0  # on CPU, compile when eager training would keep the threads busy longer
COMPILE_DECISION_STEPS = 3  # eager steps timed before deciding (after the first, which warms up)
FIT_TIMED_STEPS = 5  # steps timed before fitting the schedule to the time limit
TIME_FIT_SLACK = 0.97  # share of the time left that the fitted steps are planned to fill
REFIT_AT = (0.2, 0.5)  # shares of the time limit at which the fit is refined from the steady rate


class StepClock:
    """Timestamps taken at the start of steps, each after waiting for the device: the wall
    clock and the CPU time this process has used (all its threads).

    Waiting costs a host round trip, so the pacer only ticks while a decision is pending (a
    handful of steps at the start of a run), never in the steady state.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def tick(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # deliberate: the clock reads finished work
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())

    def reset(self) -> None:
        self.times.clear()
        self.cpu_times.clear()

    def seconds_per_step(self, skip: int, steps: int) -> float | None:
        """Mean seconds of ``steps`` steps after the first ``skip`` ticks, once there are enough."""
        return _mean_step(self.times, skip, steps)

    def cpu_seconds_per_step(self, skip: int, steps: int) -> float | None:
        """Mean CPU seconds (all threads) of the same steps as :meth:`seconds_per_step`."""
        return _mean_step(self.cpu_times, skip, steps)


def _mean_step(times: list[float], skip: int, steps: int) -> float | None:
    if len(times) < skip + steps + 1:
        return None
    window = times[skip:skip + steps + 1]
    return (window[-1] - window[0]) / steps


@dataclass(frozen=True)
class CompileDecision:
    """``compile: auto`` on a CPU: the choice and the measurement behind it."""

    compile: bool
    seconds_per_step: float  # by the wall clock, which other processes' load stretches
    minutes_left: float  # eager training left by the CPU-time rate, capped by the time limit
    cpu_seconds_per_step: float | None = None  # CPU time of all the process's threads
    threads: int = 1

    def describe(self) -> str:
        """One log line: what was measured, the choice, and how to make it yourself."""
        measured = f"an eager step takes {self.seconds_per_step:.2f} s"
        if self.cpu_seconds_per_step is not None:
            idle = idle_seconds_per_step(self.seconds_per_step, self.cpu_seconds_per_step, self.threads)
            measured += (f" by the clock, {self.cpu_seconds_per_step:.2f} s of CPU time on "
                         f"{self.threads} thread{'s' if self.threads > 1 else ''} ({idle:.2f} s "
                         "with its cores to itself: other processes' load does not count)")
        return (f"compile=auto: {measured}; about {self.minutes_left:.0f} min of eager training "
                f"left, {'more' if self.compile else 'less'} than the {AUTO_COMPILE_MINUTES:.0f} "
                f"min that pays for compiling: {'compiling the step' if self.compile else 'staying eager'} "
                "(pretrain.compile=true or false chooses instead)")


def idle_seconds_per_step(wall: float, cpu: float | None, threads: int) -> float:
    """Seconds a step would take with the process's threads on cores of their own: its CPU time
    over the thread count, never more than the wall time it took. Other processes' load
    stretches the wall time, not the CPU time, so this is what the machine load cannot fool
    (threads that spin while they wait for a core still add some CPU time)."""
    if cpu is None:
        return wall
    return min(wall, cpu / max(1, threads))


def _slowest_rank(device: torch.device, seconds: float, cpu: float | None) -> tuple[float, float | None]:
    """The slowest process's timings, so that every rank of a distributed run takes the same
    decision at the same step (ranks that compiled differently would verify their first
    compiled steps, a collective, out of step with each other)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return seconds, cpu
    values = torch.tensor([seconds, -1.0 if cpu is None else cpu], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return float(values[0]), None if cpu is None else float(values[1])


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
            seconds = self.clock.seconds_per_step(skip=1, steps=COMPILE_DECISION_STEPS)
            if seconds is None:
                return None
            # CPU time measures a CPU step's own work; on an accelerator the host mostly waits.
            cpu = self.clock.cpu_seconds_per_step(skip=1, steps=COMPILE_DECISION_STEPS) \
                if self.clock.device.type == "cpu" else None
            seconds, cpu = _slowest_rank(self.clock.device, seconds, cpu)
            threads = torch.get_num_threads()
            rate = idle_seconds_per_step(seconds, cpu, threads)
            minutes = (self.planned_steps - step_number) * rate / 60
            if self.time_limit_minutes is not None:
                minutes = min(minutes, self.time_limit_minutes)
            self.deciding_compile = False
            self.clock.reset()
            return CompileDecision(minutes > AUTO_COMPILE_MINUTES, seconds, minutes, cpu, threads)
        # The first timed step after compiling compiles the step: skip two ticks.
        seconds = self.clock.seconds_per_step(skip=2, steps=FIT_TIMED_STEPS)
        if seconds is None:
            return None
        self.fitting = False
        self.anchor = (step_number, self.clock.times[-1])
        return self._fit(step_number, seconds, self.clock.times[-1])

    def _refine(self, step_number: int) -> ScheduleFit | None:
        """At each share of :data:`REFIT_AT` of the limit, refit from the rate since the first fit.

        Between refits this reads the host clock only (no device wait); the step that refits
        waits once so that the time it reads is the device's.
        """
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
