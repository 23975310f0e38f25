"""Warnings and log lines a user of this project cannot act on, filtered by their exact text.

A newcomer reads every warning as something to fix; these are libraries' about their own code
(mlflow's type-hint request for kedro-mlflow's ``PythonModel``, OmegaConf's deprecation of
``register_new_resolver`` that Kedro calls). Each filter matches one message, so any other
warning still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

UNACTIONABLE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("Add type hints to the `predict` method", UserWarning),
    ("register_new_resolver() is deprecated", UserWarning),
)


def filter_unactionable_warnings() -> None:
    """Drop :data:`UNACTIONABLE_WARNINGS` in this process: a ``warnings`` filter, and a logging
    filter on ``py.warnings`` for mlflow's, which it raises under its own ``simplefilter``."""
    for text, category in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}", category=category)
    captured = logging.getLogger("py.warnings")
    if _is_actionable not in captured.filters:
        captured.addFilter(_is_actionable)


def _is_actionable(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text, _ in UNACTIONABLE_WARNINGS)


def reapply_logger_levels(logging_config: Mapping[str, Any]) -> None:
    """Set each logger of ``logging_config`` (conf/logging.yml) to its level again: Lightning
    sets its logger to INFO when first imported, after Kedro applied the file, so its "Tip"
    adverts would show although logging.yml asks for WARNING."""
    for name, settings in (logging_config.get("loggers") or {}).items():
        level = settings.get("level") if isinstance(settings, Mapping) else None
        if level is not None:
            logging.getLogger(name).setLevel(level)
