"""One pretraining per project data folder: a second is refused, a dead one's lock taken over."""

from __future__ import annotations

import json
import logging
import os
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

LONG = ["--pipeline", "pretrain", "--env", "test", "--params", "pretrain.max_epochs=60,pretrain.compile=false"]
# ingest and views ran in the first run: the second trains a shorter configuration only
TRAIN = ["--pipeline", "pretrain", "--from-nodes", "pretrain", "--env", "test",
         "--params", "pretrain.max_epochs=1,pretrain.compile=false,registry.enabled=false"]


def _start(project: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, "-m", "kedro", "run", *args], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(path: Path, **record) -> None:
    path.write_text(json.dumps({"host": socket.gethostname(), "process_start": None,
                                "started": "2026-01-01T00:00:00+00:00", "mlflow_run_id": "abc123", **record}))


def test_a_held_lock_refuses_a_second_holder_naming_its_pid_host_and_run(tmp_path):
    first, second = PretrainLock(tmp_path / LOCK_NAME), PretrainLock(tmp_path / LOCK_NAME)
    first.acquire()
    first.record_run("run-of-the-first")

    with pytest.raises(PretrainLocked) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in message
    assert "run-of-the-first" in message and str(tmp_path / LOCK_NAME) in message
    assert f"kill {os.getpid()}" in message

    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second.acquire()  # free again
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    second.release()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    gone = dead_pid()
    write_lock(path, pid=gone)

    with caplog.at_level(logging.WARNING, logger="aavae.kedro_ext.pretrain_lock"):
        PretrainLock(path).acquire()

    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"PID {gone}" in caplog.text and "is gone" in caplog.text and "abc123" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME], "no temporary files left"


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    # The holder's PID now belongs to a live process (this one) started at another time.
    path = tmp_path / LOCK_NAME
    write_lock(path, pid=os.getpid(), process_start="another-boot:12345")

    PretrainLock(path).acquire()

    assert json.loads(path.read_text())["process_start"] != "another-boot:12345"


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path):
    path = tmp_path / LOCK_NAME
    write_lock(path, pid=dead_pid(), host="gpu-node-7")

    with pytest.raises(PretrainLocked, match=f"on host gpu-node-7.*another host.*delete {path}"):
        PretrainLock(path).acquire()
    assert json.loads(path.read_text())["host"] == "gpu-node-7"


def test_an_unreadable_lock_is_named_with_what_to_do(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("{not json")
    with pytest.raises(PretrainLocked, match=f"{path} cannot be read .*delete that file"):
        PretrainLock(path).acquire()


def test_release_leaves_a_lock_taken_over_by_another_run_alone(tmp_path):
    path = tmp_path / LOCK_NAME
    mine = PretrainLock(path)
    mine.acquire()
    write_lock(path, pid=1, host="elsewhere")  # e.g. deleted by hand, then taken by another run

    mine.release()

    assert json.loads(path.read_text())["host"] == "elsewhere"


def test_the_hook_locks_pipelines_with_the_pretrain_node_on_rank_zero_only(tmp_path, monkeypatch):
    pipelines = register_pipelines()
    hooks = PretrainLockHooks()
    lock = tmp_path / "data" / "06_models" / LOCK_NAME
    params = {"project_path": str(tmp_path)}

    hooks.before_pipeline_run(params, pipelines["evaluate"], None)
    assert not lock.exists(), "evaluate does not train"
    hooks.after_pipeline_run()

    hooks.before_pipeline_run(params, pipelines["pretrain"], None)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    hooks.on_pipeline_error()
    assert not lock.exists(), "a failed run releases the lock"

    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks run the same pipeline with rank 0
    hooks.before_pipeline_run(params, pipelines["pretrain"], None)
    assert not lock.exists()



def test_a_second_kedro_pretraining_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path):
    project = copy_project(tmp_path)
    lock = project / "data" / "06_models" / LOCK_NAME

    first = _start(project, LONG)
    wait_for_new_checkpoint(project, first, after=0)
    (first_run,) = project_runs(project)
    record = json.loads(lock.read_text())
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
    assert json.loads(lock.read_text())["pid"] == first.pid, "SIGKILL leaves the lock behind"

    done = kedro(project, *TRAIN, timeout=300)
    assert f"Took over the pretraining lock {lock}" in done.stdout + done.stderr
    assert not lock.exists(), "released at the end"
    killed, finished = project_runs(project)
    assert killed.info.status == "KILLED" and finished.info.status == "FINISHED"
    assert finished.info.run_id in killed.data.tags["killed_because"]


@pytest.mark.parametrize("ending", ["raise SystemExit(143)", "raise KeyboardInterrupt"])
def test_an_interrupted_process_releases_its_lock_on_the_way_out(tmp_path, ending):
    # SIGTERM during training becomes SystemExit (training/engine.py fit); Ctrl+C a KeyboardInterrupt.
    path = tmp_path / LOCK_NAME
    code = f"from aavae.kedro_ext.pretrain_lock import PretrainLock; PretrainLock({str(path)!r}).acquire(); {ending}"
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert ended.returncode != 0
    assert not path.exists(), ended.stderr
