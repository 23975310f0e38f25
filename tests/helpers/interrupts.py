"""A Ctrl+C at a chosen step, for the tests (and the subprocess workers) that resume from it."""

from __future__ import annotations

import lightning.pytorch as pl


class InterruptAt(pl.Callback):
    """Ctrl+C after ``step`` optimisation steps, as a user would press it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
