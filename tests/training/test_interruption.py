"""Killing pretraining mid-run and rerunning the same command resumes; no run stays RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_project, kedro, project_runs
from tests.helpers.interrupts import wait_for_new_checkpoint

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

ARGS = ["--pipeline", "pretrain", "--env", "test", "--params", "pretrain.max_epochs=6"]


def _start(project: Path) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", *ARGS], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)





def test_sigterm_then_sigkill_then_resume(tmp_path):
    project = copy_project(tmp_path)

    first = _start(project)
    last = wait_for_new_checkpoint(project, first, after=0)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) != 0
    preview = project / "data/test/08_reporting/view_preview.png"
    assert preview.is_file() and last.is_file()
    assert not (project / "data/06_models/.pretrain.lock.json").exists(), "SIGTERM releases the pretraining lock"

    second = _start(project)
    wait_for_new_checkpoint(project, second, after=last.stat().st_mtime)
    second.kill()  # SIGKILL: nothing in the process can react
    second.wait(timeout=60)

    kedro(project, *ARGS)
    first_run, second_run, third_run = project_runs(project)
    assert first_run.info.status == "KILLED", "SIGTERM ends the run as KILLED"
    assert second_run.info.status == "KILLED", "the next run closes the SIGKILLed one"
    assert "was gone" in second_run.data.tags["killed_because"]
    assert third_run.info.status == "FINISHED"
    assert third_run.data.tags["resumed_from_run"] == second_run.info.run_id
    assert preview.is_file(), "earlier artifacts survive"

    import torch

    bundle = torch.load(project / "data/test/06_models/aavae_model.pt", weights_only=True)
    assert bundle["epochs"] == 6
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    epochs_in_final_run = client.get_metric_history(third_run.info.run_id, "train_loss")
    assert len(epochs_in_final_run) < 6, "the final attempt resumed instead of starting over"

    # The same command again after a finished run trains nothing, says so, and points the
    # model bundle (and so the next evaluate) at the run that trained it, not the empty one.
    again = kedro(project, *ARGS)
    assert "Already trained" in again.stdout + again.stderr
    fourth = project_runs(project)[-1]
    assert fourth.data.tags["already_trained_in_run"] == third_run.info.run_id
    assert "train_loss" not in fourth.data.metrics
    rebuilt = torch.load(project / "data/test/06_models/aavae_model.pt", weights_only=True)
    assert rebuilt["mlflow_run_id"] == third_run.info.run_id and rebuilt["epochs"] == 6
    for key, value in bundle["state_dict"].items():
        assert torch.equal(rebuilt["state_dict"][key], value), key

    # Starting over (resume off) moves the finished run's checkpoints aside instead of
    # writing beside them as last-v1.ckpt, which left the stale last.ckpt for the next resume.
    folder = last.parent
    old_last = torch.load(folder / "last.ckpt", weights_only=True, mmap=True)
    started = time.time()
    kedro(project, *ARGS[:-1], "pretrain.max_epochs=6,pretrain.resume=false")
    fourth_run = project_runs(project)[-1]
    assert "resumed_from_run" not in fourth_run.data.tags
    assert len(client.get_metric_history(fourth_run.info.run_id, "train_loss")) == 6, "it started over"
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]
    assert (folder / "last.ckpt").stat().st_mtime > started
    (archive,) = folder.parent.glob(f"{folder.name}.replaced-*")
    kept = torch.load(archive / "last.ckpt", weights_only=True, mmap=True)
    assert kept["global_step"] == old_last["global_step"], "earlier checkpoints are kept, not destroyed"
    assert (archive / "mlflow_run.json").read_text().count(third_run.info.run_id) == 1
