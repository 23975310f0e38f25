"""MLflow glue, beside the Kedro glue (the plain-PyTorch layers below never import it): Lightning's
live metrics in the run kedro-mlflow opened, run names and tags, and runs of dead processes closed.

What ``mlflow ui`` shows first (checked in MLflow 3.17.2, in headless Chromium):

* An experiment page opens on the GenAI "Overview" unless the address says
  ``?workflowType=machine_learning`` (:func:`runs_page_address`); the experiment tag
  ``mlflow.experimentKind``, which UIs without that switch read, is set too.
* Charts whose metric name has a ``/`` come first, in sections above the alphabetical "Model
  metrics": the loss curves are also logged as ``loss/train`` and ``loss/val`` (:data:`CHART_FIRST`).
* The runs table shows no metric until columns are picked: the address names a view of the
  headline metrics stored on the experiment (:func:`store_headline_view`), as "share view" does.
"""

from __future__ import annotations

import atexit
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.environment_variables import MLFLOW_RUN_CONTEXT
from mlflow.tracking import MlflowClient

from aavae.common.liveness import Liveness, ProcessRecord
from aavae.reporting.report import HEADLINE_VIEW, experiment_address

log = logging.getLogger(__name__)

#: The experiment tag MLflow 3 reads for what an experiment holds, and the value for training runs.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: Metrics logged a second time under a sectioned name, so MLflow's UI charts them first.
CHART_FIRST = {"train_loss": "loss/train", "val_loss": "loss/val"}


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def mark_experiment_as_model_training() -> None:
    """Tag the active run's experiment as MLflow's own "Machine learning" choice does, unless a
    user chose another kind for it."""
    run = mlflow.active_run()
    if run is not None and EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment(run.info.experiment_id).tags:
        MlflowClient().set_experiment_tag(run.info.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def runs_page_address(host: str = "127.0.0.1", port: int | str = 5000) -> str | None:
    """Where ``mlflow ui`` shows the active run's experiment as training runs (its Runs page in
    "Model training" mode, not MLflow 3's GenAI overview), or None without a run."""
    run = mlflow.active_run()
    return experiment_address(run.info.experiment_id, host, port) if run else None


#: The experiment tag MLflow's UI reads a shared view from (``?viewStateShareKey=<key>``).
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def store_headline_view(few_labels: Sequence[int] = ()) -> None:
    """Store the runs table's columns on the active run's experiment, where the address of
    :func:`runs_page_address` opens them: the environment, the registered model and the headline
    accuracies, fewest labels and all (``eval_*`` on the training run)."""
    keys = ([f"few_label_{min(few_labels)}_top1"] if few_labels else []) + ["linear_top1"]
    columns = ["tags.`env`", "attributes.`Models`", *(f"metrics.`{pre}{key}`" for pre in ("eval_", "") for key in keys)]
    run = mlflow.active_run()
    if run is not None:
        MlflowClient().set_experiment_tag(run.info.experiment_id, SHARED_VIEW_TAG + HEADLINE_VIEW,
                                          json.dumps({"selectedColumns": columns}))


def run_name(pipelines: Sequence[str], params: Mapping[str, Any], env: str | None) -> str:
    """``pretrain digits aavae resnet18-w32 seed0``: what a list of runs must tell apart, the
    data, the model and its seed, and ``(cifar10_short)`` outside the default environment."""
    dataset, model, pretrain, evaluate = (params.get(group) or {} for group in ("dataset", "model", "pretrain", "evaluate"))
    data = dataset.get("name")
    if data == "imagefolder" and dataset.get("path"):  # the folder or archive says more than the reader
        data = Path(str(dataset["path"]).rstrip("/")).name.split(".")[0]
    trained = f"{pretrain.get('objective')} {model.get('encoder')}-w{model.get('width')} seed{pretrain.get('seed')}"
    if evaluate.get("checkpoint") and "pretrain" not in pipelines:
        trained = f"checkpoint {Path(str(evaluate['checkpoint'])).name}"
    where = f" ({env})" if env not in (None, "local", "base") else ""
    return f"{'+'.join(pipelines)} {data} {trained}{where}"


def log_params_once(params: dict[str, Any]) -> None:
    """Log params to the active run, skipping keys it already holds (MLflow refuses changes)."""
    run_id = active_run_id()
    if run_id is not None:
        existing = MlflowClient().get_run(run_id).data.params
        mlflow.log_params({key: value for key, value in params.items() if key not in existing}, run_id=run_id)


def set_tags(tags: dict[str, Any]) -> None:
    if active_run_id() is not None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics_to_run(run_id: str | None, metrics: dict[str, float], data_sha256: str | None = None) -> None:
    """Write metrics onto another run (the training run), when it exists in this store and did
    not record other training data (its ``data.sha256`` tag) than ``data_sha256``, the
    fingerprint of the images the metrics were measured on."""
    if not run_id:
        return
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning("Training run %s is not in this MLflow store; not copying metrics to it.", run_id)
        return
    trained_on = run.data.tags.get("data.sha256")
    if trained_on and trained_on != data_sha256:
        log.warning("Training run %s trained on other data (sha256 %s) than these metrics were "
                    "measured on (%s): not copying them onto it.", run_id, trained_on[:12],
                    (data_sha256 or "unrecorded")[:12])
        return
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))


def close_if_stale(run_id: str | None) -> None:
    """Mark a run KILLED if it is still RUNNING though its process is gone (e.g. SIGKILL)."""
    if not run_id or active_run_id() in (None, run_id):  # no store to ask (ranks above 0, notebooks)
        return
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return
    if run.info.status == "RUNNING":
        # Runs with process tags were judged when this run started; this one predates them, and
        # the pretraining lock says no other pretraining uses this checkpoint folder.
        mark_killed(client, run_id, "still RUNNING when the next pretraining of its checkpoint folder started")


PROCESS_TAGS = ("process.pid", "process.host", "process.start")
KILLED_NOTE_TAG = "killed_because"


def process_tags() -> dict[str, str]:
    """This process as run tags, for :func:`close_runs_of_gone_processes` to judge later."""
    me = ProcessRecord.current()
    return dict(zip(PROCESS_TAGS, (str(me.pid), me.host, me.start or ""), strict=True))


def tag_runs_opened_from_here() -> str | None:
    """Have every run MLflow opens from now on carry :func:`process_tags` from its creation
    (``MLFLOW_RUN_CONTEXT``): set after the run opens, a kill in between would leave a RUNNING run
    that nothing can judge. Returns the variable's previous value for :func:`stop_tagging_runs`."""
    previous = MLFLOW_RUN_CONTEXT.get_raw()
    MLFLOW_RUN_CONTEXT.set(json.dumps({**json.loads(previous or "{}"), **process_tags()}))
    return previous


def stop_tagging_runs(previous: str | None) -> None:
    """Undo :func:`tag_runs_opened_from_here` (child processes must not inherit this PID)."""
    if previous is None:
        MLFLOW_RUN_CONTEXT.unset()
    else:
        MLFLOW_RUN_CONTEXT.set(previous)


def close_runs_of_gone_processes(keep: str | None = None) -> list[str]:
    """Mark KILLED every RUNNING run of the store (but ``keep``) whose process is gone, which a
    SIGKILL, an out-of-memory kill or a power cut leaves RUNNING forever; return their ids. Runs
    without process tags or of other hosts cannot be judged (:mod:`aavae.common.liveness`)."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    closed = []
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=10_000)
    for run in running:
        if run.info.run_id == keep or PROCESS_TAGS[0] not in run.data.tags:
            continue
        pid, host, start = (run.data.tags.get(tag, "") for tag in PROCESS_TAGS)
        try:
            holder = ProcessRecord(int(pid), host, start or None)
        except ValueError:
            continue
        if holder.liveness() is Liveness.GONE:
            mark_killed(client, run.info.run_id,
                        f"its process ({holder.describe()}) was gone when run {keep or '?'} started")
            closed.append(run.info.run_id)
    return closed


def mark_killed(client: MlflowClient, run_id: str, why: str) -> None:
    """End a run whose process is gone as KILLED, saying why in its ``killed_because`` tag."""
    client.set_tag(run_id, KILLED_NOTE_TAG, why)
    client.set_terminated(run_id, "KILLED")
    log.warning("Marked MLflow run %s as KILLED: %s.", run_id, why)


def end_active_run_killed() -> None:
    """End the active run as KILLED (SIGTERM / Ctrl+C reach past kedro-mlflow's error hook): now,
    since the node may run in another thread than the main one, whose run MLflow's exit
    handler would end FINISHED; and the main thread's at exit, before that handler."""
    if (run_id := active_run_id()) is not None:
        MlflowClient().set_terminated(run_id, "KILLED")
        end_runs_killed_at_exit()


def end_runs_killed_at_exit(armed: bool = True) -> None:
    """At interpreter exit, end the runs still open as KILLED (``armed=False`` disarms it): Ctrl+C
    or ``SystemExit`` pass by Kedro's error hook, and MLflow's exit handler would end them FINISHED."""
    atexit.unregister(_end_runs_killed)
    if armed:
        atexit.register(_end_runs_killed)  # after MLflow's handler, so it runs before it


def _end_runs_killed() -> None:
    while mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
