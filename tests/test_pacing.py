"""The pacer on a fake clock: the schedule fit, first from the early steps, then refined from the
steady rate so that a run whose first steps are slow still ends with its time limit; and the
compile decision, taken on the process's CPU time so that other processes' load cannot tip it."""

from __future__ import annotations

import pytest
import torch

from aavae.training import pacing
from aavae.training.pacing import (
    FIT_TIMED_STEPS,
    REFIT_AT,
    TIME_FIT_SLACK,
    CompileDecision,
    Pacer,
    ScheduleFit,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(monkeypatch: pytest.MonkeyPatch, seconds_of_step, limit_minutes: float = 10.0):
    """Drive a pacer step by step; every decision it returns, with the step it came on."""
    clock = FakeClock()
    monkeypatch.setattr(pacing.time, "perf_counter", clock)
    pacer = Pacer(torch.device("cpu"), decide_compile=False, fit_schedule=True,
                  time_limit_minutes=limit_minutes, planned_steps=10**6)
    decisions, total, step = [], None, 0
    while total is None or step < total:
        decision = pacer.before_step(step)
        if isinstance(decision, ScheduleFit):
            decisions.append((step, decision))
            total = decision.total_steps
        clock.now += seconds_of_step(step)
        step += 1
    return decisions, clock.now, pacer


def test_a_slow_start_is_corrected_by_the_refits_and_the_run_fills_its_limit(monkeypatch):
    # 1.5 s a step for the first 20 steps, then 1.0 s: the early fit alone plans ~1.5x too few.
    decisions, ended, pacer = _run(monkeypatch, lambda step: 1.5 if step < 20 else 1.0)
    first_step, first = decisions[0]
    assert first_step == 2 + FIT_TIMED_STEPS and not first.refined
    assert first.seconds_per_step == pytest.approx(1.5)
    refits = [fit for _, fit in decisions[1:]]
    assert [fit.refined for fit in refits] == [True] * len(REFIT_AT)
    assert refits[-1].seconds_per_step == pytest.approx(1.0, abs=0.05)
    assert refits[-1].total_steps > first.total_steps * 1.3
    assert TIME_FIT_SLACK * 600 - 5 <= ended <= 600, "the run ends with its limit, not minutes early"
    assert pacer.settled


def test_a_steady_rate_keeps_the_first_fit(monkeypatch):
    decisions, ended, _ = _run(monkeypatch, lambda step: 2.0)
    totals = {fit.total_steps for _, fit in decisions}
    # Each refit keeps the slack on what is left, which is less: the end moves by ~1 %.
    assert max(totals) - min(totals) <= 0.02 * min(totals)
    assert TIME_FIT_SLACK * 600 - 5 <= ended <= 600


def test_no_fit_no_refit(monkeypatch):
    monkeypatch.setattr(pacing.time, "perf_counter", FakeClock())
    pacer = Pacer(torch.device("cpu"), decide_compile=False, fit_schedule=False,
                  time_limit_minutes=10.0, planned_steps=100)
    assert pacer.settled and pacer.before_step(0) is None


def _decide(monkeypatch, wall_per_step: float, cpu_per_step: float, threads: int = 2, planned_steps: int = 1000):
    """The compile decision of a pacer whose steps take ``wall_per_step`` s by the clock and
    ``cpu_per_step`` s of the process's CPU time (both clocks faked)."""
    wall, cpu = FakeClock(), FakeClock()
    monkeypatch.setattr(pacing.time, "perf_counter", wall)
    monkeypatch.setattr(pacing.time, "process_time", cpu)
    monkeypatch.setattr(pacing.torch, "get_num_threads", lambda: threads)
    pacer = Pacer(torch.device("cpu"), decide_compile=True, fit_schedule=False, time_limit_minutes=None,
                  planned_steps=planned_steps)
    for step in range(20):
        decision = pacer.before_step(step)
        if decision is not None:
            return decision
        wall.now += wall_per_step
        cpu.now += cpu_per_step
    raise AssertionError("no decision")


def test_compile_auto_decides_on_cpu_time_so_other_processes_load_does_not_tip_it(monkeypatch):
    # Both threads busy a full second each step, but other processes stretch each step to
    # 3 s by the clock: ~1,000 s of the step's own work left, under the 10 minutes -> eager.
    loaded = _decide(monkeypatch, wall_per_step=3.0, cpu_per_step=1.2)
    assert isinstance(loaded, CompileDecision) and not loaded.compile
    assert loaded.minutes_left == pytest.approx(996 * 0.6 / 60)
    # The same steps with the cores to themselves decide the same way.
    idle = _decide(monkeypatch, wall_per_step=0.62, cpu_per_step=1.2)
    assert not idle.compile and idle.minutes_left == pytest.approx(loaded.minutes_left)
    # Twice the work per step is twice the minutes: over 10, compile.
    assert _decide(monkeypatch, wall_per_step=3.0, cpu_per_step=2.4).compile


def test_the_compile_decision_states_what_it_measured_and_how_to_override_it(monkeypatch):
    line = _decide(monkeypatch, wall_per_step=3.0, cpu_per_step=1.2).describe()
    assert line.startswith("compile=auto: an eager step takes 3.00 s by the clock, 1.20 s of CPU time on 2 threads "
                           "(0.60 s with its cores to itself")
    assert "less than the 10 min that pays for compiling: staying eager" in line
    assert line.endswith("(pretrain.compile=true or false chooses instead)")


def test_off_the_cpu_the_compile_decision_reads_the_clock(monkeypatch):
    wall = FakeClock()
    monkeypatch.setattr(pacing.time, "perf_counter", wall)
    monkeypatch.setattr(pacing.torch.cuda, "synchronize", lambda device=None: None)
    pacer = Pacer(torch.device("cuda"), decide_compile=True, fit_schedule=False, time_limit_minutes=None,
                  planned_steps=10_000)
    decision = None
    for step in range(20):
        decision = decision or pacer.before_step(step)
        wall.now += 0.5
    assert decision.cpu_seconds_per_step is None and decision.compile
    assert decision.minutes_left == pytest.approx((10_000 - 4) * 0.5 / 60)
