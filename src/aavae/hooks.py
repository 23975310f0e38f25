"""Project hooks: validate parameters before any node runs; keep logging.yml's levels; name the runner."""

from __future__ import annotations

import re
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from aavae.config import validate_all
from aavae.quiet import reapply_logger_levels


class ParameterValidationHooks:
    """Fail within seconds on an unknown key or a wrong type, before ingestion starts."""

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


class RunnerTagHooks:
    """The MLflow run's ``runner`` tag names the runner class, not an object address.

    Kedro records the runner as ``str(runner)`` (``<kedro.runner...SequentialRunner object at
    0x7f...>``) and kedro-mlflow copies that into the tag. The record itself stays as it is:
    kedro-viz recognises a sequential run by that very string.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        # Plugin hooks run before project hooks, so kedro-mlflow's run is open by now.
        recorded = str(run_params.get("runner"))
        match = re.search(r"\.(\w+) object at 0x[0-9a-fA-F]+>$", recorded)
        name = match.group(1) if match else "SequentialRunner" if recorded == "None" else None
        if name and mlflow.active_run() is not None:  # None: Kedro's default runner
            mlflow.set_tag("runner", name)
