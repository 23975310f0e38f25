"""Progress where no terminal shows a bar: one plain line per epoch and every ~30 seconds.

Lightning's progress bar redraws one terminal line; written to a pipe, a CI log or nohup it
shows nothing until the end. When stdout is not a terminal, :class:`PlainProgress` logs
lines such as ``epoch 3/30, step 1,234/5,000 (24.7%), 812 images/s, 4 min left, loss 123.4``.

The rate leaves out the seconds the step spent compiling or being captured (the module's
``engine_setup_seconds``): counted in, a 90-second compile over a few steps made the first
estimate hours where the run took minutes.

The terminal check, the rate of lines and the durations are the project's one progress
helper's (:mod:`aavae.common.progress`), which evaluation and the embed pipeline use too.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl

from aavae.common.progress import EVERY_SECONDS, duration, log, output_is_terminal

__all__ = ["EVERY_SECONDS", "PlainProgress", "output_is_terminal"]


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

    def _report(self, trainer: pl.Trainer, module: pl.LightningModule, epoch_done: bool = False) -> None:
        now, step = time.monotonic(), trainer.global_step
        limits = (getattr(module, "planned_steps", lambda: None)(), getattr(module, "_fitted_steps", None),
                  trainer.max_steps if trainer.max_steps > 0 else None)
        total = min((t for t in limits if t), default=0)
        batch = getattr(module, "batches", (0, 0))[1]
        setup = getattr(module, "engine_setup_seconds", 0.0)  # one-off: compiling, capturing
        rate = (step - self._first_step) / max(now - self._started - setup, 1e-9)
        epoch = trainer.current_epoch + 1
        parts = [f"epoch {epoch} done" if epoch_done else f"epoch {epoch}/{trainer.max_epochs}",
                 f"step {step:,}" + (f"/{total:,} ({100 * step / total:.1f}%)" if total else "")]
        if rate > 0:
            parts.append(f"{rate * batch:,.0f} images/s")
            left = (total - step) / rate if total else None
            limit = getattr(getattr(module, "config", None), "max_time_minutes", None)
            if limit is not None:
                by_clock = limit * 60 - (now - self._started)
                left = by_clock if left is None else min(left, by_clock)
            if left is not None and left > 0:
                parts.append(f"{duration(left)} left")
        loss = getattr(module, "epoch_metrics", {}).get("loss")
        if loss is not None:
            parts.append(f"loss {loss:,.4g}")
        log.info(", ".join(parts))
        self._last_time = now
