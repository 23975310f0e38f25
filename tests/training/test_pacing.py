"""The pacer on a fake clock: the schedule fit, first from the early steps, then refined from the
steady rate so that a run whose first steps are slow still ends with its time limit; and the
compile decision, taken on the steady step (not the slow warm-up steps) and on the process's CPU
time, so that neither the first steps' set-up nor other processes' load can tip it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aavae.training import pacing
from aavae.training.pacing import (
    AUTO_COMPILE_MINUTES,
    COMPILE_DECISION_STEPS,
    CPU_COMPILE_MINUTES,
    CPU_COMPILED_SPEEDUP,
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


def _decide(monkeypatch, wall_per_step, cpu_per_step, threads: int = 2, planned_steps: int = 1000,
            device: str = "cpu") -> CompileDecision:
    """The compile decision of a pacer whose step ``n`` takes ``wall_per_step(n)`` s by the clock
    and ``cpu_per_step(n)`` s of the process's CPU time (both clocks faked; a number: every step)."""
    wall, cpu = FakeClock(), FakeClock()
    monkeypatch.setattr(pacing.time, "perf_counter", wall)
    monkeypatch.setattr(pacing.time, "process_time", cpu)
    monkeypatch.setattr(pacing.torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(pacing.torch.cuda, "synchronize", lambda device=None: None)
    pacer = Pacer(torch.device(device), decide_compile=True, fit_schedule=False, time_limit_minutes=None,
                  planned_steps=planned_steps)
    for step in range(100):
        decision = pacer.before_step(step)
        if decision is not None:
            assert step == COMPILE_DECISION_STEPS + 1, "decided on the steps after the first"
            return decision
        wall.now += wall_per_step(step) if callable(wall_per_step) else wall_per_step
        cpu.now += cpu_per_step(step) if callable(cpu_per_step) else cpu_per_step
    raise AssertionError("no decision")


def _steps_for(minutes: float, seconds_per_step: float) -> int:
    """Planned steps whose eager steps left, after the timed ones, take ``minutes``."""
    return COMPILE_DECISION_STEPS + 1 + round(minutes * 60 / seconds_per_step)


def test_slow_warm_up_steps_do_not_make_compile_auto_compile(monkeypatch):
    # The default run on the AMX Xeon: the first bf16 steps took ~16 s, the steady ones 0.3 s.
    # A run of 20 minutes at the steady rate stays eager; timed on its warm-up it looked like 18 hours.
    def step_time(step):
        return 16.0 if step < 4 else 0.3

    decision = _decide(monkeypatch, step_time, lambda step: 2 * step_time(step),
                       planned_steps=_steps_for(20, 0.3))
    assert not decision.compile
    assert decision.seconds_per_step == pytest.approx(0.3)
    assert decision.minutes_left == pytest.approx(20)
    assert decision.clock_range == (pytest.approx(0.3), pytest.approx(16.0))


@settings(max_examples=60, deadline=None)
@given(warm_up=st.integers(0, 3 * COMPILE_DECISION_STEPS // 4),
       slower=st.floats(1.0, 100.0),
       steady=st.floats(0.01, 30.0),
       minutes=st.floats(0.5, 200.0),
       spikes=st.lists(st.integers(0, COMPILE_DECISION_STEPS + 1), max_size=COMPILE_DECISION_STEPS // 2))
def test_the_compile_decision_is_the_steady_rates_whatever_the_warm_up_and_load_spikes(
        warm_up, slower, steady, minutes, spikes):
    """The class: up to three quarters of the timed steps slow from set-up, later steps slowed by
    load here and there; the decision is the one the steady rate gives."""
    slow = {step for step in range(1, COMPILE_DECISION_STEPS + 1) if step <= warm_up or step in spikes}
    assume(len(slow) <= 3 * COMPILE_DECISION_STEPS // 4)  # the quartile leaves out this many slow steps

    def step_time(step):
        return steady * (slower if step <= warm_up or step in spikes else 1.0)

    with pytest.MonkeyPatch.context() as monkeypatch:
        decision = _decide(monkeypatch, step_time, step_time, threads=1,
                           planned_steps=_steps_for(minutes, steady))
    assert decision.seconds_per_step == pytest.approx(steady)
    assert decision.minutes_left == pytest.approx(minutes, rel=1e-3, abs=steady / 60)
    if abs(minutes - AUTO_COMPILE_MINUTES) > 0.1:
        assert decision.compile == (minutes > AUTO_COMPILE_MINUTES)


@pytest.mark.slow
def test_compiling_pays_only_past_its_own_cost_at_the_compiled_speed():
    # Past the threshold, compiling then running the steps faster ends sooner than eager; before it, later.
    for minutes, compile_is_sooner in ((AUTO_COMPILE_MINUTES * 1.01, True), (AUTO_COMPILE_MINUTES * 0.99, False)):
        assert (CPU_COMPILE_MINUTES + minutes / CPU_COMPILED_SPEEDUP < minutes) == compile_is_sooner


def test_compile_auto_decides_on_cpu_time_so_other_processes_load_does_not_tip_it(monkeypatch):
    # Both threads busy 0.6 s each step, but other processes stretch each step to 3 s by the
    # clock: 20 minutes of the step's own work left, under the threshold -> eager.
    planned = _steps_for(20, 0.6)
    loaded = _decide(monkeypatch, wall_per_step=3.0, cpu_per_step=1.2, planned_steps=planned)
    assert isinstance(loaded, CompileDecision) and not loaded.compile
    assert loaded.minutes_left == pytest.approx(20)
    # The same steps with the cores to themselves decide the same way.
    idle = _decide(monkeypatch, wall_per_step=0.62, cpu_per_step=1.2, planned_steps=planned)
    assert not idle.compile and idle.minutes_left == pytest.approx(loaded.minutes_left)
    # Twice the work per step is twice the minutes: over the threshold, compile.
    assert _decide(monkeypatch, wall_per_step=3.0, cpu_per_step=2.4, planned_steps=planned).compile


def test_the_compile_decision_states_what_it_measured_and_how_to_override_it(monkeypatch):
    line = _decide(monkeypatch, wall_per_step=lambda step: 3.0 if step < 3 else 0.7, cpu_per_step=1.2,
                   planned_steps=_steps_for(20, 0.6)).describe()
    assert line.startswith("compile=auto: a steady eager step takes 0.60 s (the lower quartile of "
                           f"{COMPILE_DECISION_STEPS} steps after the first, by its CPU time over 2 threads, "
                           "which other processes' load does not stretch; by the clock they took 0.70-3.00 s); "
                           "about 20.0 min of eager training left, less than the 31 min past which compiling "
                           "pays (about 4 min to compile for steps 1.15x as fast): staying eager"), line
    assert line.endswith("(pretrain.compile=true or false chooses instead)")


def test_off_the_cpu_the_compile_decision_reads_the_clock(monkeypatch):
    decision = _decide(monkeypatch, wall_per_step=0.5, cpu_per_step=0.01, planned_steps=10_000, device="cuda")
    assert decision.threads is None and decision.compile
    assert decision.seconds_per_step == pytest.approx(0.5)
    assert decision.minutes_left == pytest.approx((10_000 - COMPILE_DECISION_STEPS - 1) * 0.5 / 60)
