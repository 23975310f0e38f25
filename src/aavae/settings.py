"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from aavae.hooks import ParameterValidationHooks

HOOKS = (ParameterValidationHooks(),)

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
