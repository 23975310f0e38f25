"""The plain progress line: its rate and time left leave out the seconds spent compiling."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from aavae.training import progress
from aavae.training.progress import PlainProgress


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, current_epoch=0, max_epochs=1, max_steps=-1)


def _module(setup_seconds: float) -> SimpleNamespace:
    return SimpleNamespace(planned_steps=lambda: 1000, _fitted_steps=None, batches=(1000, 128),
                           config=SimpleNamespace(max_time_minutes=None), epoch_metrics={},
                           engine_setup_seconds=setup_seconds)


def test_the_rate_after_a_compile_is_the_steps_rate_not_the_compiles(monkeypatch, caplog):
    clock = FakeMonotonic()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    callback = PlainProgress(every_seconds=30)
    callback.on_train_start(_trainer(0), _module(0.0))
    # A first step that compiled for 90 s, then 30 steps of 1 s each.
    clock.now += 90 + 31
    with caplog.at_level(logging.INFO, logger="aavae.common.progress"):
        callback.on_train_batch_end(_trainer(31), _module(setup_seconds=90.0))
    (line,) = caplog.messages
    assert "step 31/1,000 (3.1%), 128 images/s, 16 min left" in line, line
    # Counted in, the compile made it 33 images/s and an hour left.
    caplog.clear()
    callback = PlainProgress(every_seconds=30)
    clock.now = 1000.0
    callback.on_train_start(_trainer(0), _module(0.0))
    clock.now += 90 + 31
    with caplog.at_level(logging.INFO, logger="aavae.common.progress"):
        callback.on_train_batch_end(_trainer(31), _module(setup_seconds=0.0))
    assert "33 images/s, 63 min left" in caplog.messages[0], caplog.messages[0]
