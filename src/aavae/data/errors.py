"""The one exception every dataset reader raises for input it cannot use."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset source that cannot be read as asked: the message names it and what to do."""
