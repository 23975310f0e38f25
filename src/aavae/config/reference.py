"""docs/parameters.md, generated from the schemas: every parameter's default, values and meaning.

``python -m aavae.config > docs/parameters.md`` writes it; ``tests/config/test_config.py`` fails when
the committed file differs from what the schemas generate.
"""

from __future__ import annotations

from typing import Any

from aavae.config import SCHEMAS

REFERENCE_COMMAND = "python -m aavae.config > docs/parameters.md"


_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "true/false", "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<",
           "multipleOf": "multiple of"}


def _allowed(schema: dict[str, Any]) -> str:
    """The values a field accepts, read from its JSON schema (pydantic's, with its bounds)."""
    if "anyOf" in schema:
        return " or ".join(_allowed(option) for option in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        return ", ".join(map(str, schema.get("enum", [schema.get("const")])))
    if schema.get("type") != "array":
        return _TYPES[schema["type"]] + _bounds(schema)
    if "prefixItems" in schema:  # a tuple of fixed length
        items = schema["prefixItems"]
        if schema.get("ordered"):  # a range
            return f"[low, high] (low <= high{', each ' + _bounds(items[0])[2:-1] if _bounds(items[0]) else ''})"
        return f"[{', '.join(_TYPES[item['type']] for item in items)}]" + _bounds(items[0], "each ")
    least = f", at least {schema['minItems']}" if schema.get("minItems") else ""
    return f"list of {_allowed(schema['items'])}{least}"


def _bounds(schema: dict[str, Any], prefix: str = "") -> str:
    number = "{:,}" if schema.get("type") == "integer" else "{:,g}"
    bounds = [f"{symbol} {number.format(schema[key])}" for key, symbol in _BOUNDS.items() if key in schema]
    return f" ({prefix}{', '.join(bounds)})" if bounds else ""


def _default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parameter_reference() -> str:
    """docs/parameters.md: every parameter of every group, its default, values and meaning,
    generated from the schemas (which ``conf/base/parameters.yml`` agrees with, tested)."""
    lines = ["# Parameters", "",
             f"Generated from the schemas in `src/aavae/config/__init__.py` by `{REFERENCE_COMMAND}`; "
             "`tests/config/test_config.py` fails when this file is out of date.", "",
             "Every group is validated before any node runs: an unknown key, a wrong type (strict: "
             "`true` is not 1, `\"3\"` is not 3) or a value out of its bounds stops the run within "
             "seconds with a message naming the key (and a \"did you mean\"). The "
             "defaults below are `conf/base`'s (the digits run); a dataset environment "
             "(`conf/cifar10`, `conf/stl10`, `conf/imagefolder`, `conf/cifar10_short`) states "
             "only what it changes. Override any on the command line: `kedro run --params "
             "pretrain.max_epochs=50,model.width=64`."]
    for group, schema in SCHEMAS.items():
        summary = " ".join((schema.__doc__ or "").strip().split("\n\n")[0].split())
        lines += ["", f"## {group}", ""] + ([summary, ""] if summary else [])
        lines += ["| key | default | values | meaning |", "|---|---|---|---|"]
        properties = schema.model_json_schema()["properties"]
        for name, info in schema.model_fields.items():
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{group}.{name}` | `{_default(info.default)}` | {_allowed(properties[name])} | {meaning} |")
    return "\n".join(lines) + "\n"
