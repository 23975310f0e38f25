"""The pacer's schedule fit, on a fake clock: first from the early steps, then refined from the
steady rate so that a run whose first steps are slow still ends with its time limit."""

from __future__ import annotations

import pytest
import torch

from aavae.training import pacing
from aavae.training.pacing import FIT_TIMED_STEPS, REFIT_AT, TIME_FIT_SLACK, Pacer, ScheduleFit


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
