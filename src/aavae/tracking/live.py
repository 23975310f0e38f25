"""Lightning's live metrics and figures in the MLflow run kedro-mlflow opened: the one part of
the MLflow glue that needs Lightning, apart so that the Kedro hooks import :mod:`aavae.tracking`
without it (a refused run answers before Lightning and torch are loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from aavae.tracking import CHART_FIRST, active_run_id, mark_experiment_as_model_training


class RunBoundMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger writing into a run it does not own: the stock logger ends its run
    FINISHED in ``finalize``, but kedro-mlflow ends this one when the whole pipeline ends."""

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        return None

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        first = {CHART_FIRST[key]: value for key, value in metrics.items() if key in CHART_FIRST}
        super().log_metrics({**metrics, **first}, step)


def live_logger() -> RunBoundMLFlowLogger | None:
    """A logger for the active run (its experiment marked as model training: curves are coming),
    or None when no run is open (e.g. in a notebook)."""
    run_id = active_run_id()
    if run_id is None:
        return None
    mark_experiment_as_model_training()
    # Strings only: the logger must survive pickling into spawned ranks.
    return RunBoundMLFlowLogger(
        tracking_uri=mlflow.get_tracking_uri(), run_id=run_id, synchronous=False
    )


class FigureToRun:
    """Log a figure into the logger's run (a class, not a closure: spawned ranks get it pickled)."""

    def __init__(self, logger: RunBoundMLFlowLogger) -> None:
        self.logger = logger

    def __call__(self, figure: Any, epoch: int) -> None:
        self.logger.experiment.log_figure(self.logger.run_id, figure, f"reconstructions/epoch_{epoch:05d}.png")
