"""No MLflow run stays RUNNING after its process died: the next `kedro run` marks it KILLED."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from aavae import tracking
from tests.conftest import copy_project, kedro, project_runs

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

# A process that opens a run the way `kedro run` does (process tags from creation), then is
# killed where nothing can end the run: SIGKILL.
KILLED_RUN = """
import os, signal, sys
import mlflow
from aavae import tracking
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("aavae")
tracking.tag_runs_opened_from_here()
run = mlflow.start_run(run_name=sys.argv[2])
print(run.info.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_run(store: str, pipeline: str) -> str:
    """The id of a RUNNING run whose process was SIGKILLed."""
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, store, pipeline], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    return done.stdout.split()[0]


def open_run(client: MlflowClient, name: str, **tags: str) -> str:
    experiment = client.get_experiment_by_name("aavae") or client.get_experiment(client.create_experiment("aavae"))
    return client.create_run(experiment.experiment_id, run_name=name, tags=tags).info.run_id


def test_running_runs_of_gone_processes_are_killed_and_the_others_left_alone(mlflow_store):
    client = MlflowClient(mlflow_store)
    dead_evaluate, dead_embed = killed_run(mlflow_store, "evaluate"), killed_run(mlflow_store, "embed")
    me = tracking.process_tags()
    alive = open_run(client, "pretrain", **me)
    reused = open_run(client, "ingest", **{**me, "process.start": "another-boot:1"})  # PID given to us since
    elsewhere = open_run(client, "pretrain", **{**me, "process.host": "gpu-node-7", "process.pid": "1"})
    untagged = open_run(client, "pretrain")  # older runs, other tools: cannot be judged
    current = open_run(client, "ingest", **me)

    closed = tracking.close_runs_of_gone_processes(keep=current)

    assert sorted(closed) == sorted([dead_evaluate, dead_embed, reused])
    status = {run_id: client.get_run(run_id).info.status
              for run_id in (dead_evaluate, dead_embed, reused, alive, elsewhere, untagged, current)}
    assert [status[r] for r in (dead_evaluate, dead_embed, reused)] == ["KILLED"] * 3
    assert [status[r] for r in (alive, elsewhere, untagged, current)] == ["RUNNING"] * 4
    note = client.get_run(dead_evaluate).data.tags["killed_because"]
    assert socket.gethostname() in note and current in note and "was gone" in note


def test_every_run_records_its_process_from_its_creation(mlflow_store):
    previous = tracking.tag_runs_opened_from_here()
    # an experiment of this store: an earlier test in the process may have made another active
    experiment = MlflowClient(mlflow_store).create_experiment("records")
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            tags = MlflowClient(mlflow_store).get_run(run.info.run_id).data.tags
    finally:
        tracking.stop_tagging_runs(previous)
    assert tags["process.pid"] == str(os.getpid()) and tags["process.host"] == socket.gethostname()
    assert "MLFLOW_RUN_CONTEXT" not in os.environ or previous is not None, "child processes do not inherit it"



def test_any_kedro_run_closes_a_killed_run_of_another_pipeline(tmp_path):
    project = copy_project(tmp_path)
    store = f"sqlite:///{project / 'mlflow.db'}"
    dead = killed_run(store, "evaluate")

    kedro(project, "--pipeline", "ingest", "--env", "test")

    killed, ingest = project_runs(project)
    assert killed.info.run_id == dead and killed.info.status == "KILLED"
    assert ingest.info.run_id in killed.data.tags["killed_because"]
    assert ingest.info.status == "FINISHED"
    assert ingest.data.tags["process.host"] == socket.gethostname() and ingest.data.tags["process.pid"].isdigit()


# A pipeline interrupted by Ctrl+C (or SystemExit): Kedro's error hook is not called, and
# MLflow's exit handler would record the run FINISHED.
INTERRUPTED_RUN = """
import sys
import mlflow
from aavae.kedro_ext.hooks import RunLivenessHooks
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("aavae")
hooks = RunLivenessHooks()
hooks.after_context_created(None)
run = mlflow.start_run(run_name="evaluate")  # what kedro-mlflow's before_pipeline_run does
print(run.info.run_id, flush=True)
hooks.before_pipeline_run()
raise KeyboardInterrupt
"""


def test_a_run_interrupted_by_ctrl_c_ends_killed_not_finished(mlflow_store):
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_RUN, mlflow_store], capture_output=True, text=True,
                          timeout=120)
    assert "KeyboardInterrupt" in done.stderr
    run = MlflowClient(mlflow_store).get_run(done.stdout.split()[0])
    assert run.info.status == "KILLED"
    assert run.data.tags["process.pid"].isdigit()
