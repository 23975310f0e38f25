"""MLflow glue: bind Lightning's live metrics to the run kedro-mlflow opened.

This sits beside the Kedro glue (it knows MLflow); the plain-PyTorch layers below never
import it.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

import mlflow
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class RunBoundMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into an existing run that it does not own.

    The stock logger marks its run FINISHED in ``finalize``; here the run belongs to
    kedro-mlflow, which closes it (FINISHED or FAILED) when the whole pipeline ends.
    """

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        return None


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def live_logger() -> RunBoundMLFlowLogger | None:
    """A logger for the active run, or None when no run is open (e.g. in a notebook)."""
    run_id = active_run_id()
    if run_id is None:
        return None
    # Strings only: the logger must survive pickling into spawned ranks.
    return RunBoundMLFlowLogger(
        tracking_uri=mlflow.get_tracking_uri(), run_id=run_id, synchronous=False
    )


def log_params_once(params: dict[str, Any]) -> None:
    """Log params to the active run, skipping keys it already holds (MLflow refuses changes)."""
    run_id = active_run_id()
    if run_id is None:
        return
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in existing:
            client.log_param(run_id, key, value)


def set_tags(tags: dict[str, Any]) -> None:
    if active_run_id() is not None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics_to_run(run_id: str | None, metrics: dict[str, float]) -> None:
    """Write metrics onto another run (the training run), when it exists in this store."""
    if not run_id:
        return
    client = MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("Training run %s is not in this MLflow store; not copying metrics to it.", run_id)
        return
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))


def close_if_stale(run_id: str | None) -> None:
    """Mark a run KILLED if it is still RUNNING though its process is gone (e.g. SIGKILL)."""
    if not run_id or run_id == active_run_id():
        return
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
        log.info("Marked the interrupted run %s as KILLED.", run_id)


def end_active_run_killed() -> None:
    """End the active run as KILLED (SIGTERM / Ctrl+C reach past kedro-mlflow's error hook).

    MLflow keeps its active-run stack per thread and ends whatever run the main thread still
    holds at exit as FINISHED; the node may run in another thread, so the status is set now
    and the main thread's run is ended as KILLED at exit, before MLflow's own exit handler.
    """
    run_id = active_run_id()
    if run_id is None:
        return
    MlflowClient().set_terminated(run_id, "KILLED")
    atexit.register(_end_runs_killed)


def _end_runs_killed() -> None:
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
