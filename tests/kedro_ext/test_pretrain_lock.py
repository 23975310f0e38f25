"""One pretraining per project data folder: a second is refused naming the first; the OS frees the
lock of a killed one, whose left record the next run names."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aavae.kedro_ext.hooks import PretrainLockHooks
from aavae.kedro_ext.pretrain_lock import LOCK_NAME, PretrainLock, PretrainLocked
from aavae.pipeline_registry import register_pipelines
from tests.conftest import copy_project, kedro, project_runs
from tests.helpers.interrupts import wait_for_new_checkpoint
from tests.helpers.project import artifact_root

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

LONG = ["--pipeline", "pretrain", "--env", "test", "--params", "pretrain.max_epochs=60,pretrain.compile=false"]
# ingest and views ran in the first run: the second trains a shorter configuration only
TRAIN = ["--pipeline", "pretrain", "--from-nodes", "pretrain", "--env", "test",
         "--params", "pretrain.max_epochs=1,pretrain.compile=false,registry.enabled=false"]

# A process that takes the lock, says so, then waits for a line on stdin and ends as told.
HOLDER = """
import os, signal, sys
from aavae.kedro_ext.pretrain_lock import PretrainLock
lock = PretrainLock(sys.argv[1])
lock.acquire()
lock.record_run("run-of-the-holder")
print("held", flush=True)
ending = sys.stdin.readline().strip()
if ending == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
exec(ending)
"""


def _start(project: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock at ``path`` (it has said so when this returns)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def end(process: subprocess.Popen, how: str) -> None:
    process.stdin.write(how + "\n")
    process.stdin.flush()
    process.wait(timeout=60)


def test_a_held_lock_refuses_a_second_holder_naming_its_pid_host_and_run(tmp_path):
    first, second = PretrainLock(tmp_path / LOCK_NAME), PretrainLock(tmp_path / LOCK_NAME)
    first.acquire()
    first.record_run("run-of-the-first")

    with pytest.raises(PretrainLocked) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in message
    assert "run-of-the-first" in message and str(tmp_path / LOCK_NAME) in message
    assert f"kill {os.getpid()})" in message

    first.release()
    assert not first.record_path.exists()
    second.acquire()  # free again
    assert json.loads(second.record_path.read_text())["pid"] == os.getpid()
    second.release()


def test_another_process_holding_the_lock_refuses_this_one_until_it_ends(tmp_path):
    path = tmp_path / LOCK_NAME
    other = holder(path)
    try:
        with pytest.raises(PretrainLocked, match=f"PID {other.pid} on host .*run-of-the-holder"):
            PretrainLock(path).acquire()
    finally:
        end(other, "pass")
    mine = PretrainLock(path)
    mine.acquire()
    mine.release()


def test_the_lock_of_a_killed_process_is_free_and_its_left_record_named(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    killed = holder(path)
    end(killed, "sigkill")
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / f"{LOCK_NAME}.json").read_text())["pid"] == killed.pid, "its record stays"

    with caplog.at_level(logging.WARNING, logger="aavae.kedro_ext.pretrain_lock"):
        lock = PretrainLock(path)
        lock.acquire()

    assert json.loads(lock.record_path.read_text())["pid"] == os.getpid()
    assert f"PID {killed.pid}" in caplog.text and "run-of-the-holder" in caplog.text
    assert "without releasing" in caplog.text
    lock.release()


def test_a_lock_taken_a_moment_ago_refuses_before_its_record_is_written(tmp_path):
    from filelock import FileLock

    with FileLock(tmp_path / LOCK_NAME), pytest.raises(PretrainLocked, match="running in this project: "
                                                       "another process .*Wait for it to finish"):
        PretrainLock(tmp_path / LOCK_NAME).acquire()


def test_the_hook_locks_pipelines_with_the_pretrain_node_on_rank_zero_only(tmp_path, monkeypatch):
    pipelines = register_pipelines()
    hooks = PretrainLockHooks()
    from kedro.io import DataCatalog, MemoryDataset

    record = tmp_path / "data" / "test" / "06_models" / f"{LOCK_NAME}.json"
    params = {"project_path": str(tmp_path)}
    catalog = DataCatalog({"artifact_root": MemoryDataset("data/test")})  # the env's root

    hooks.before_pipeline_run(params, pipelines["evaluate"], None)
    assert not record.exists(), "evaluate does not train"
    hooks.after_pipeline_run()

    hooks.before_pipeline_run(params, pipelines["pretrain"], catalog)
    assert json.loads(record.read_text())["pid"] == os.getpid()
    with pytest.raises(PretrainLocked):
        PretrainLock.for_root(tmp_path / "data/test").acquire()
    other_environment = PretrainLock.for_root(tmp_path / "data")
    other_environment.acquire()  # each environment's checkpoints have a lock of their own
    other_environment.release()
    hooks.on_pipeline_error()
    assert not record.exists(), "a failed run releases the lock"
    again = PretrainLock.for_root(tmp_path / "data/test")
    again.acquire()  # free again
    again.release()

    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks run the same pipeline with rank 0
    hooks.before_pipeline_run(params, pipelines["pretrain"], catalog)
    assert not record.exists()


def test_a_second_kedro_pretraining_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path):
    project = copy_project(tmp_path)
    lock = artifact_root(project, "test") / "06_models" / LOCK_NAME

    first = _start(project, LONG)
    wait_for_new_checkpoint(project, first, after=0)
    (first_run,) = project_runs(project)
    record = json.loads(lock.with_name(f"{LOCK_NAME}.json").read_text())
    assert (record["pid"], record["mlflow_run_id"]) == (first.pid, first_run.info.run_id)

    refused = kedro(project, *TRAIN, check=False, timeout=300)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert f"PID {first.pid} on host {socket.gethostname()}" in said and first_run.info.run_id in said
    assert "Traceback" not in said, "a refusal is a message, not a crash"
    assert len(project_runs(project)) == 1, "the refused run opened no MLflow run"
    assert first.poll() is None, "the first run trains on"

    first.kill()  # SIGKILL: nothing in the process can clean up
    first.wait(timeout=60)
    assert json.loads(lock.with_name(f"{LOCK_NAME}.json").read_text())["pid"] == first.pid, \
        "SIGKILL leaves the record behind (the OS frees the lock)"

    done = kedro(project, *TRAIN, timeout=300)
    # the log folds long lines, and puts where a line was logged at the end of the first one
    said = "".join(re.sub(r"\S+\.py:\d+", "", done.stdout + done.stderr).split())
    assert f"PID{first.pid}" in said and "endedwithoutreleasing" in said
    assert not lock.with_name(f"{LOCK_NAME}.json").exists(), "released at the end"
    killed, finished = project_runs(project)
    assert killed.info.status == "KILLED" and finished.info.status == "FINISHED"
    assert finished.info.run_id in killed.data.tags["killed_because"]


@pytest.mark.parametrize("ending", ["raise SystemExit(143)", "raise KeyboardInterrupt"])
def test_an_interrupted_process_releases_its_lock_on_the_way_out(tmp_path, ending, caplog):
    # SIGTERM during training becomes SystemExit (training/engine.py fit); Ctrl+C a KeyboardInterrupt.
    path = tmp_path / LOCK_NAME
    end(holder(path), ending)
    assert not path.with_name(f"{LOCK_NAME}.json").exists(), "its record is deleted"
    lock = PretrainLock(path)
    with caplog.at_level(logging.WARNING, logger="aavae.kedro_ext.pretrain_lock"):
        lock.acquire()
    lock.release()
    assert "without releasing" not in caplog.text
