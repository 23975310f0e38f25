"""How a run's log reads: one unwrapped line per record in a file or pipe, Rich in a terminal.

Rich lays a record out in columns as wide as the terminal, and where stdout is a file or a pipe
(``kedro run > run.log``, CI, nohup) it assumes 80: a run id or a path is then cut across lines,
and neither ``grep`` nor a copy finds it whole. So ``conf/logging.yml`` logs plain lines (Kedro
allows only ``logging`` and ``kedro.logging`` classes there, and applies the file before any
project code runs), and :func:`rich_log_in_a_terminal` puts Rich back where stdout is a terminal.
"""

from __future__ import annotations

import logging
import sys

from rich.logging import RichHandler


def rich_log_in_a_terminal() -> None:
    """Route warnings to the log (as Kedro's Rich handler does), and where stdout is a terminal
    replace the root logger's plain stdout handlers with Rich's."""
    logging.captureWarnings(True)
    if not sys.stdout.isatty():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler.stream is sys.stdout:
            root.removeHandler(handler)
            root.addHandler(RichHandler(level=handler.level, markup=True))
