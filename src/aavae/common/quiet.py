"""Warnings and log lines a user of this project cannot act on, filtered by their exact text.

A newcomer reads every warning as something to fix. These come from libraries, about their own
code, and nothing in this project or its configuration can change them:

* mlflow asks for type hints on ``predict`` of every ``PythonModel`` subclass it sees defined
  (kedro-mlflow's own class on every ``kedro run``; ours has a signature instead), wrapped in
  raw ANSI colour codes that show up literally in Kedro's log.
* Kedro's and kedro-mlflow's config loaders call OmegaConf's ``register_new_resolver``, which
  OmegaConf has deprecated.

Each filter matches one message, so any other warning from the same library still shows.
Lightning's start-up tips are log lines, not warnings: :func:`reapply_logger_levels` handles
them.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

#: Text of each warning to drop, and its category.
UNACTIONABLE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    ("Add type hints to the `predict` method", UserWarning),
    ("register_new_resolver() is deprecated", UserWarning),
)


def filter_unactionable_warnings() -> None:
    """Drop the warnings listed in :data:`UNACTIONABLE_WARNINGS` in this process.

    Two filters, because mlflow raises its type-hint warning inside its own
    ``warnings.catch_warnings()`` that sets ``simplefilter("once", UserWarning)``, which
    overrides any ``warnings`` filter: the logging filter drops it where Kedro routes warnings
    to the log (``py.warnings``), the ``warnings`` filter drops the others everywhere.
    """
    for text, category in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}", category=category)
    captured = logging.getLogger("py.warnings")
    if not any(isinstance(existing, _UnactionableWarningFilter) for existing in captured.filters):
        captured.addFilter(_UnactionableWarningFilter())


class _UnactionableWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text, _ in UNACTIONABLE_WARNINGS)


def reapply_logger_levels(logging_config: Mapping[str, Any]) -> None:
    """Set each logger named in ``logging_config`` (conf/logging.yml) to its level again.

    Lightning sets its own logger to INFO when it is first imported, which happens after Kedro
    applied conf/logging.yml (the pipelines import it), so its device lines and "Tip" adverts
    would show although logging.yml asks for WARNING. Re-applying the file's levels once the
    pipelines are loaded gives logging.yml the last word, whichever way a user sets it.
    """
    for name, settings in (logging_config.get("loggers") or {}).items():
        level = settings.get("level") if isinstance(settings, Mapping) else None
        if level is not None:
            logging.getLogger(name).setLevel(level)
