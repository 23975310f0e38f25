"""Validated records: strict on the way in (:data:`STRICT`: a boolean or string is not a number,
no unknown key, no NaN), complete when read back (:func:`read_record`: a key missing from a file
is refused, not filled with a default the file never said)."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

R = TypeVar("R")
_SCALARS = (str, int, float, bool, type(None))


def read_record(record: type[R], values: Any, source: str, fix: str) -> R:
    """``record`` from the stored ``values``, all of its keys present, or a one-line ValueError
    naming ``source``, every problem and ``fix``. Values nested past a flat list are refused
    before validation, which would hash them (a tuple nested 10^6 deep crashes it)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source} must be a mapping of {', '.join(record.__pydantic_fields__)}, "  # type: ignore[attr-defined]
                         f"got {type(values).__name__}")
    problems = [f"a {type(key).__name__} key (keys are strings)" for key in values if not isinstance(key, str)]
    problems += [f"{key}: expected a number, string, true/false, null or a list of them, got {type(value).__name__}"
                 for key, value in values.items() if isinstance(key, str) and not _plain(value)]
    missing = [name for name in record.__pydantic_fields__ if name not in values]  # type: ignore[attr-defined]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if not problems:
        try:
            return record(**values)
        except ValidationError as error:
            problems = [_describe(problem) for problem in error.errors()]
    raise ValueError(f"{source} is not a complete, valid record: {'; '.join(problems)}. {fix}")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, _SCALARS) for item in value)
    return isinstance(value, _SCALARS)


def _describe(problem: Any) -> str:
    message = problem["msg"].removeprefix("Value error, ")
    if not problem["loc"]:  # a rule of the whole record: its message names the fields
        return message
    return f"{'.'.join(map(str, problem['loc']))}: {message} (got {reprlib.repr(problem['input'])})"
