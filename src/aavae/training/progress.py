"""Progress where no terminal shows a bar (Lightning's redraws one line, which shows nothing in
a pipe, a CI log or nohup): a line per epoch and every ~30 s, such as ``epoch 3/10, step
1,234/5,000 (24.7%), 812 images/s, 4 min left, loss 123.4``, bounded by the schedule or about
where ``pretrain.max_time_minutes`` stops it (``step 5/~480``). The rate leaves out compiling
and capturing: counted in, a 90-second compile made the first estimate hours for minutes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer

from aavae.common.progress import EVERY_SECONDS, duration, log

if TYPE_CHECKING:
    from aavae.training.module import PretrainModule


class PlainProgress(pl.Callback):
    """Log the training position, throughput, time left and last epoch's loss, at most every
    ``every_seconds`` and at each epoch end. Reads only host-side counters: no device sync."""

    def __init__(self, every_seconds: float = EVERY_SECONDS) -> None:
        self.every_seconds = every_seconds
        self._last_time = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._last_time = time.monotonic()
        self._started, self._first_step = self._last_time, trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args) -> None:
        if time.monotonic() - self._last_time >= self.every_seconds:
            self._report(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._report(trainer, module, epoch_done=True)

    def _report(self, trainer: pl.Trainer, module: PretrainModule, epoch_done: bool = False) -> None:
        now, step = time.monotonic(), trainer.global_step
        setup = module.engine_setup_seconds  # one-off: compiling, capturing
        rate = (step - self._first_step) / max(now - self._started - setup, 1e-9)
        total, by_clock, left = run_bound(trainer, module, rate)
        epochs = min(trainer.max_epochs, math.ceil(total / module.steps_per_epoch))
        about = "~" if by_clock else ""
        epoch = trainer.current_epoch + 1
        parts = [f"epoch {epoch}/{about}{epochs}" + (" done" if epoch_done else ""),
                 f"step {step:,}/{about}{total:,} ({100 * step / total:.1f}%"
                 + (", where pretrain.max_time_minutes stops it)" if by_clock else ")")]
        if rate > 0:
            parts.append(f"{rate * module.batches[1]:,.0f} images/s")
            if left is not None and left > 0:
                parts.append(f"{duration(left)} left")
        loss = module.epoch_metrics.get("loss")
        if loss is not None:
            parts.append(f"loss {loss:,.4g}")
        log.info(", ".join(parts))
        self._last_time = now


def run_bound(trainer: pl.Trainer, module: PretrainModule, rate: float) -> tuple[int, bool, float | None]:
    """Where the run will end: (the step, whether the time limit ends it there, the seconds
    left): its schedule's end, or the step the clock reaches first at ``rate`` steps a second."""
    step = trainer.global_step
    total = module.schedule_lengths()[0]
    if trainer.max_steps > 0:
        total = min(total, trainer.max_steps)
    left = (total - step) / rate if rate > 0 else None
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    clock_left = timer.time_remaining() if timer is not None else None  # Lightning's: a resume included
    if clock_left is None or (left is not None and left <= clock_left):
        return total, False, left
    if rate <= 0:  # no rate yet: only the clock's time left is known
        return total, False, clock_left
    return min(total, step + int(rate * clock_left)), True, clock_left
