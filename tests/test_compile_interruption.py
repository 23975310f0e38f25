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
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_project, project_runs

ARGS = ["--pipeline", "pretrain", "--env", "test", "--params", "pretrain.compile=true"]
REACTION_SECONDS = 45  # from the signal to the exit, checkpoint and MLflow included, on a busy CPU


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before '{text}':\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"'{text}' did not appear in time")


@pytest.mark.parametrize(("how", "exit_code"), [("sigterm", 128 + signal.SIGTERM), ("ctrl_c", 128 + signal.SIGINT)])
def test_a_run_stopped_while_compiling_stops_at_once_and_ends_killed(tmp_path, how: str, exit_code: int):
    project = copy_project(tmp_path)
    log = tmp_path / "run.log"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty_compile_cache")}  # a cold compile: minutes
    with open(log, "w") as output:
        # Its own session, as a terminal's foreground job: Ctrl+C reaches the compile workers too.
        process = subprocess.Popen([sys.executable, "-m", "kedro", "run", *ARGS], cwd=project, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(log, "Compiling the training step", process)
        time.sleep(3)  # well inside the compile
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
