"""The one exception every dataset reader raises for input it cannot use."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset source that cannot be read as asked: the message names the file, member, key
    or argument, what was expected, and what to do."""
