"""Validated records: strict on the way in, complete when read back.

The parameter schemas (``aavae.config``), the augmentation policy and the model spec are
pydantic models with :data:`STRICT`: a boolean is not a number, a string is not a number, no
key is unknown and nothing is NaN or infinite. :func:`read_record` reads one back from a file
(``view_policy.json``, a bundle's ``spec``): a key missing there is refused, not filled with
a default the file never said.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError

#: The one configuration of every validated record.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

R = TypeVar("R")
_SCALARS = (str, int, float, bool, type(None))


def read_record(record: type[R], values: Any, source: str, fix: str) -> R:
    """``record`` from the stored ``values``, all of its keys present; otherwise a ValueError of
    one line naming ``source``, every problem and ``fix`` (how to write the file again).

    Only JSON's scalars and flat lists of them are read: a stored value nested deeper is
    refused before validation, which would hash it (a tuple nested a million deep crashes
    the interpreter there).
    """
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
