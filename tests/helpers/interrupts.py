"""A Ctrl+C at a chosen step, for the tests (and the subprocess workers) that resume from it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl


class InterruptAt(pl.Callback):
    """Ctrl+C after ``step`` optimisation steps, as a user would press it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def wait_for_new_checkpoint(project: Path, process: subprocess.Popen, after: float, timeout: float = 300) -> Path:
    """The run's ``last.ckpt`` once one newer than ``after`` appears: whole, as every checkpoint
    is written to a temporary and renamed into place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for last in (project / "data/test/06_models/checkpoints").glob("*/last.ckpt"):
            if last.stat().st_mtime > after:
                return last
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before writing a checkpoint")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared in time")
