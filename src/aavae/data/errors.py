"""The one exception every dataset reader raises for input it cannot use."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset source that cannot be read as asked.

    The message names the offending file, archive member, key or argument, says what was
    expected, and what to do about it.
    """
