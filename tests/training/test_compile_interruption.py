"""A real `kedro run` stopped while torch.compile works (minutes on a CPU) stops at once and
ends as any interrupted run: the MLflow run KILLED, a checkpoint to resume from, a non-zero exit.

Before, a SIGTERM was only noted by Lightning for its loop to read after the step, that is
after the compile: one run took 209 s to react.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_project, project_runs

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

ARGS = ["--pipeline", "pretrain", "--env", "test", "--params", "pretrain.compile=true"]
REACTION_SECONDS = 45  # from the signal to the exit, checkpoint and MLflow included, on a busy CPU


def _wait_for(what: str, seen: Callable[[], bool], process: subprocess.Popen, log: Path,
              timeout: float = 600) -> None:
    """Poll until ``seen()`` (a log line, a file), failing if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in time")


def _as_a_terminal_job() -> None:
    """In the child: Ctrl+C's default action, as a terminal's foreground job has it. A shell that
    starts a command in the background (``&``, as CI runners may) makes SIGINT ignored, and an
    ignored signal stays ignored in every process started below: Python then never raises
    KeyboardInterrupt, and the run compiles and trains on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("how", "exit_code"), [("sigterm", 128 + signal.SIGTERM), ("ctrl_c", 128 + signal.SIGINT)])
def test_a_run_stopped_while_compiling_stops_at_once_and_ends_killed(tmp_path, how: str, exit_code: int):
    project = copy_project(tmp_path)
    log = tmp_path / "run.log"
    cache = tmp_path / "empty_compile_cache"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200",
           "TORCHINDUCTOR_CACHE_DIR": str(cache)}  # a cold compile: minutes
    with open(log, "w") as output:
        # Its own session, as a terminal's foreground job: Ctrl+C reaches the compile workers too.
        process = subprocess.Popen([sys.executable, "-m", "kedro", "run", *ARGS], cwd=project, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_as_a_terminal_job)
    try:
        _wait_for("the compile's start", lambda: "Compiling the training step" in log.read_text(errors="replace"),
                  process, log)
        # well inside the compile: Inductor has written the source of a first kernel
        _wait_for("a first compiled kernel", lambda: any(cache.rglob("*.cpp")), process, log)
        sent = time.monotonic()
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        returncode = process.wait(timeout=300)
        reaction = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text(errors="replace")
    assert reaction < REACTION_SECONDS, f"{reaction:.0f} s from the signal to the exit:\n{text[-3000:]}"
    assert returncode == exit_code, "the shell's status of the signal"
    assert "Compiled the training step" not in text, "stopped inside the compile"
    (run,) = project_runs(project)
    assert run.info.status == "KILLED"
    (last,) = (project / "data/test/06_models/checkpoints").glob("*/last.ckpt")
    assert torch.load(last, weights_only=True, mmap=True)["global_step"] == 0, "no step finished"
