"""The plain progress line: its bounds are where the run ends (steps, epochs, or the time limit),
and its rate and time left leave out the seconds spent compiling."""

from __future__ import annotations

import logging
import math
import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Timer

from aavae.training import progress
from aavae.training.progress import PlainProgress


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trainer(step: int, max_epochs: int = 1, max_steps: int = -1, callbacks=()) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, current_epoch=0, max_epochs=max_epochs, max_steps=max_steps,
                           callbacks=list(callbacks))


def _module(setup_seconds: float = 0.0, steps_per_epoch: int = 1000, planned_steps: int = 1000,
            batch: int = 128) -> SimpleNamespace:
    return SimpleNamespace(schedule_lengths=lambda: (planned_steps, 0), steps_per_epoch=steps_per_epoch,
                           batches=(steps_per_epoch, batch), epoch_metrics={}, engine_setup_seconds=setup_seconds)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _line(monkeypatch, trainer, module, seconds: float) -> str:
    """The line logged ``seconds`` after the start, at ``trainer``'s step."""
    clock = FakeMonotonic()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    callback = PlainProgress(every_seconds=1)
    callback.on_train_start(_trainer(0), module)
    clock.now += seconds
    logger, lines = logging.getLogger("aavae.common.progress"), Lines()
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(lines)
    try:
        callback.on_train_batch_end(trainer, module)
    finally:
        logger.removeHandler(lines)
    (line,) = lines.lines
    return line


def test_the_rate_after_a_compile_is_the_steps_rate_not_the_compiles(monkeypatch):
    # A first step that compiled for 90 s, then 30 steps of 1 s each.
    line = _line(monkeypatch, _trainer(31), _module(setup_seconds=90.0), 90 + 31)
    assert "step 31/1,000 (3.1%), 128 images/s, 16 min left" in line, line
    # Counted in, the compile made it 33 images/s and an hour left.
    line = _line(monkeypatch, _trainer(31), _module(setup_seconds=0.0), 90 + 31)
    assert "33 images/s, 63 min left" in line, line


def test_a_run_bounded_by_steps_shows_its_step_count_and_the_epochs_that_holds(monkeypatch):
    # conf/cifar10_short: 500 steps of 195 a epoch, max_epochs left at conf/base's 30.
    line = _line(monkeypatch, _trainer(5, max_epochs=30, max_steps=500),
                 _module(steps_per_epoch=195, planned_steps=500, batch=256), 40)
    assert line.startswith("epoch 1/3, step 5/500 (1.0%), "), line


def test_a_run_the_time_limit_ends_first_shows_about_where_the_clock_stops_it(monkeypatch):
    # The old conf/cifar10_short: 100,000 epochs that the 8-minute limit stops; 1 step a second.
    timer = Timer(duration={"minutes": 8})
    monkeypatch.setattr(timer, "time_remaining", lambda stage="train": 475.0)
    line = _line(monkeypatch, _trainer(5, max_epochs=100_000, callbacks=[timer]),
                 _module(steps_per_epoch=195, planned_steps=19_500_000, batch=256), 5)
    assert line.startswith("epoch 1/~3, step 5/~480 (1.0%, where pretrain.max_time_minutes stops it), "
                           "256 images/s, 8 min left"), line
    # A limit the schedule ends before does not change the bound.
    monkeypatch.setattr(timer, "time_remaining", lambda stage="train": 10_000.0)
    line = _line(monkeypatch, _trainer(5, max_epochs=3, callbacks=[timer]),
                 _module(steps_per_epoch=195, planned_steps=585, batch=256), 5)
    assert line.startswith("epoch 1/3, step 5/585 (0.9%), 256 images/s, 10 min left"), line


@settings(max_examples=50, deadline=None)
@given(steps_per_epoch=st.integers(1, 500), max_epochs=st.integers(1, 100_000),
       max_steps=st.one_of(st.none(), st.integers(1, 10**7)), done=st.floats(0, 1))
def test_the_bounds_shown_are_where_the_run_ends(steps_per_epoch, max_epochs, max_steps, done):
    """The class: any mix of max_epochs and max_steps; the line's step bound is the step the run
    ends at, and its epoch bound the epoch that step falls in."""
    ends = min(max_steps or math.inf, steps_per_epoch * max_epochs)
    step = int(done * ends)
    with pytest.MonkeyPatch.context() as monkeypatch:
        line = _line(monkeypatch, _trainer(step, max_epochs, max_steps or -1),
                     _module(steps_per_epoch=steps_per_epoch, planned_steps=ends), 60)
    shown = re.match(r"epoch 1/(\d+), step [\d,]+/([\d,]+) ", line)
    assert shown, line
    assert int(shown[2].replace(",", "")) == ends
    assert int(shown[1]) == math.ceil(ends / steps_per_epoch) <= max_epochs
