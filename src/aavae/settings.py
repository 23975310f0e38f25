"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from aavae.common.launch import launched_rank
from aavae.common.quiet import filter_unactionable_warnings
from aavae.kedro_ext.distributed_catalog import RankZeroCatalog
from aavae.kedro_ext.hooks import (
    DeadWritersTemporariesHooks,
    LoggingLevelHooks,
    ParameterValidationHooks,
    PretrainLockHooks,
    ResultsTableHooks,
    RunLivenessHooks,
    RunTagHooks,
    TrackingStoreHooks,
)
from aavae.reporting.console import rich_log_in_a_terminal

# Kedro imports this module before its plugins and config loaders: the earliest project code
# that runs in `kedro run`, so the filters are in place before the warnings they silence.
filter_unactionable_warnings()
rich_log_in_a_terminal()

HOOKS = (ParameterValidationHooks(), LoggingLevelHooks(), RunTagHooks(), PretrainLockHooks(),
         TrackingStoreHooks(), RunLivenessHooks(), DeadWritersTemporariesHooks(), ResultsTableHooks())

# Under torchrun/SLURM every rank runs `kedro run --pipeline train`: one MLflow run (rank 0's)
# and one writer of each artifact (see distributed_catalog.py).
DATA_CATALOG_CLASS = RankZeroCatalog
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow") if launched_rank() > 0 else ()

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # A dataset environment (conf/cifar10, ...) states only what differs from base.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**"],
    },
}
