"""Project hooks: validate parameters before any node runs; keep logging.yml's levels; name and
tag the MLflow run; one pretraining per data folder; an MLflow store that always opens; no MLflow
run left RUNNING by a dead process; no temporary file left by a killed writer; the results table
printed after an evaluation."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from aavae import tracking
from aavae.common.launch import launched_rank
from aavae.common.liveness import remove_dead_temporaries
from aavae.common.quiet import reapply_logger_levels
from aavae.config import validate_all
from aavae.kedro_ext.pretrain_lock import PretrainLock
from aavae.reporting.report import results_text
from aavae.tracking.store import anchored_at, prepare_sqlite_store, sqlite_path

log = logging.getLogger(__name__)

PRETRAIN_NODE = "pretrain"


class ParameterValidationHooks:
    """Fail within seconds on an unknown key, a wrong type (strict: true is not 1), a value out of
    the bounds its use needs or a group that is not a mapping, before ingestion starts."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_all(context.params)


class LoggingLevelHooks:
    """conf/logging.yml's levels hold for libraries that set their own level on import."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        # The pipelines are imported by now, and with them Lightning, which resets its logger.
        from kedro.framework.project import LOGGING

        reapply_logger_levels(LOGGING.data)


class RunTagHooks:
    """Name the MLflow run for what it ran (``pretrain digits aavae resnet18-w32 seed0``, not
    kedro-mlflow's "pretrain" over and over; a name set in mlflow.yml stays), tag its environment
    (the default one too) and runner, and store the runs table's headline view. The ``runner`` tag
    gets the class name, not Kedro's ``str(runner)`` (``<kedro.runner...SequentialRunner object at
    0x7f...>``), which Kedro's record keeps: kedro-viz recognises a sequential run by that string."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        # Plugin hooks run before project hooks, so kedro-mlflow's run is open by now.
        if mlflow.active_run() is None:
            return
        recorded = str(run_params.get("runner"))
        match = re.search(r"\.(\w+) object at 0x[0-9a-fA-F]+>$", recorded)
        runner = match.group(1) if match else "SequentialRunner" if recorded == "None" else None
        env = run_params.get("env") or "local"  # Kedro's default_run_env (settings.py)
        params = catalog.load("parameters")
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        tags = {"env": env, **({"runner": runner} if runner else {})}
        if mlflow.active_run().info.run_name == "+".join(pipelines):  # kedro-mlflow's name, not mlflow.yml's
            tags["mlflow.runName"] = tracking.run_name(pipelines, params, env)
        mlflow.set_tags(tags)
        tracking.store_headline_view((params.get("evaluate") or {}).get("few_labels") or ())


class ResultsTableHooks:
    """A run that evaluates ends by printing the results table, what it says and where to look
    next, as ``make run`` always did; the metrics and the report's path come from the catalog,
    so they follow the environment's artifact folder."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if "metrics" not in pipeline.all_outputs():
            return
        # Kedro's catalog config (to_config) omits the path of a wrapped dataset: _describe has it
        report = Path(catalog.get("report")._describe()["filepath"])
        report = report.relative_to(Path.cwd()) if report.is_relative_to(Path.cwd()) else report
        store = sqlite_path(mlflow.get_tracking_uri()) or Path("mlflow.db")
        print(results_text(catalog.load("metrics"), report, store))


class PretrainLockHooks:
    """One pretraining per environment's artifact root at a time, taken before kedro-mlflow opens
    its run (``tryfirst``), so a refused run leaves no trace in MLflow. Only for pipelines with the
    ``pretrain`` node, and only by rank 0 when torchrun or SLURM started every rank as a ``kedro
    run`` of its own (the other ranks train with it, not against it)."""

    def __init__(self) -> None:
        self.lock: PretrainLock | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self.lock = None
        if launched_rank() > 0 or not any(node.name == PRETRAIN_NODE for node in pipeline.nodes):
            return
        self.lock = PretrainLock.for_root(Path(run_params.get("project_path") or ".") / catalog.load("artifact_root"))
        self.lock.acquire()

    @hook_impl
    def before_node_run(self) -> None:
        if self.lock is not None:  # kedro-mlflow's run is open now
            self.lock.record_run(tracking.active_run_id())

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self.lock is not None:
            self.lock.release()  # Ctrl+C and SystemExit: released at interpreter exit instead
        self.lock = None

    on_pipeline_error = after_pipeline_run  # a failed run lets go the same way


class TrackingStoreHooks:
    """Create a missing SQLite MLflow store whole, or replace one a killed run left half made
    (:mod:`aavae.tracking.store`), before kedro-mlflow opens it (``tryfirst``); a relative store
    path names a file in the project folder, wherever the process started."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        if launched_rank() > 0:  # kedro-mlflow is off on these ranks: they never open the store
            return
        loader = context.config_loader
        loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])  # as kedro-mlflow does
        try:
            config = loader["mlflow"]
        except MissingConfigException:
            config = {}
        server = config.get("server") or {}
        uri = anchored_at(server.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"),
                          context.project_path)
        if uri:  # kedro-mlflow reads the loader's entry set here
            loader["mlflow"] = {**config, "server": {**server, "mlflow_tracking_uri": uri}}
        prepare_sqlite_store(uri)


class RunLivenessHooks:
    """Every MLflow run records its process (:func:`aavae.tracking.tag_runs_opened_from_here`, armed
    before kedro-mlflow opens the run, disarmed in our ``before_pipeline_run``, which Kedro calls
    after the plugin's); each start closes the runs of dead processes; this run ends KILLED if the
    process exits without the pipeline finishing or failing (Ctrl+C, ``SystemExit``)."""

    def __init__(self) -> None:
        self._previous: str | None = None
        self._armed = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        if launched_rank() == 0:  # other ranks open no run (settings.py disables kedro-mlflow)
            self._previous, self._armed = tracking.tag_runs_opened_from_here(), True

    @hook_impl
    def before_pipeline_run(self) -> None:
        if self._armed:
            tracking.stop_tagging_runs(self._previous)
            self._armed = False
        run_id = tracking.active_run_id()
        if run_id is None:
            return
        tracking.set_tags(tracking.process_tags())  # a run opened before the session (notebooks)
        tracking.close_runs_of_gone_processes(keep=run_id)
        tracking.end_runs_killed_at_exit()

    @hook_impl
    def after_pipeline_run(self) -> None:
        tracking.end_runs_killed_at_exit(armed=False)

    on_pipeline_error = after_pipeline_run  # kedro-mlflow ends a failed run FAILED


class DeadWritersTemporariesHooks:
    """Temporaries of a killed writer (``.<name>.tmp-<pid>-<host>-*`` beside the artifact or
    checkpoint it was replacing) are removed at the next run, and named: nothing else would ever
    remove them. Only rank 0 sweeps (the other ranks write nothing)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if launched_rank() > 0:
            return
        data = Path(run_params.get("project_path") or ".") / "data"
        layers = sorted([*data.glob("0[2-8]_*"), *data.glob("*/0[2-8]_*")])  # base's and each environment's
        checkpoints = [layer / "checkpoints" for layer in layers if layer.name == "06_models"]
        folders = [*layers, *checkpoints,
                   *(run for folder in checkpoints if folder.is_dir() for run in sorted(folder.iterdir()))]
        for removed in remove_dead_temporaries(folder for folder in folders if folder.is_dir()):
            log.warning("Removed %s, left by a writer that was killed mid-write (the artifact it "
                        "was replacing is intact).", removed)
