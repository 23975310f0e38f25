"""docs/parameters.md, generated from the schemas: every parameter's default, values and meaning.

``python -m aavae.config > docs/parameters.md`` writes it; ``tests/test_config.py`` fails when
the committed file differs from what the schemas generate.
"""

from __future__ import annotations

import re
from typing import Any

from aavae.config import SCHEMAS

REFERENCE_COMMAND = "python -m aavae.config > docs/parameters.md"


def _allowed(info: Any) -> str:
    """The values a field accepts, read from its annotation and bounds."""
    annotation = re.sub(r"Annotated\[(\w+), FieldInfo\(.*?metadata=\[Ge\(ge=(\d+)\)\]\)\]", r"\1 >= \2",
                        str(info.annotation).replace("typing.", ""))
    choices = re.findall(r"Literal\[([^\]]*)\]", annotation)
    text = " or ".join(c.replace("'", "") for c in choices)
    if "bool" in annotation.split("|")[0] or annotation.startswith("bool"):
        text = f"true/false{' or ' + text if text else ''}"
    elif not text:
        text = re.sub(r"<class '(\w+)'>", r"\1", annotation).replace(" | None", "").replace(" | ", " or ")
    bounds = [f"{symbol} {getattr(rule, name)}" for rule in info.metadata
              for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(rule, name, None) is not None]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("bounds"):  # a view field's bounds, stated by ViewPolicy
        bounds.append(str(extra["bounds"]))
    if "None" in annotation:
        text += " or null"
    return text + (f" ({', '.join(bounds)})" if bounds else "")


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
             "`tests/test_config.py` fails when this file is out of date.", "",
             "Every group is validated before any node runs: an unknown key or a wrong type stops "
             "the run within seconds with a message naming the key (and a \"did you mean\"). The "
             "defaults below are `conf/base`'s (the digits run); a dataset environment "
             "(`conf/cifar10`, `conf/stl10`, `conf/imagefolder`, `conf/cifar10_short`) states "
             "only what it changes. Override any on the command line: `kedro run --params "
             "pretrain.max_epochs=50,model.width=64`."]
    for group, schema in SCHEMAS.items():
        summary = " ".join((schema.__doc__ or "").strip().split("\n\n")[0].split())
        lines += ["", f"## {group}", ""] + ([summary, ""] if summary else [])
        lines += ["| key | default | values | meaning |", "|---|---|---|---|"]
        for name, info in schema.model_fields.items():
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{group}.{name}` | `{_default(info.default)}` | {_allowed(info)} | {meaning} |")
    return "\n".join(lines) + "\n"
