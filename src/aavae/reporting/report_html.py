"""A one-page, self-contained HTML report of an evaluation: tables, figures, parameters.

Plain Python: it takes the metrics dict (as in ``metrics.json``), the training parameters and
PNG bytes, and returns one HTML string. Images are embedded as base64 ``data:`` URIs and the
styling is inline CSS, so the file can be mailed, archived or opened offline; no JavaScript.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aavae.reporting.report import (  # the printed report says the same
    accuracy_columns,
    conclusion,
    evaluation_note,
    short_training_note,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = (
    ("dataset", "dataset"),
    ("evaluation", "evaluation"),  # same_data | transfer | data_unrecorded
    ("objective", "objective"),
    ("epochs", "pretraining epochs"),
    ("protocol", "linear-eval protocol"),
    ("checkpoint", "checkpoint"),
    ("training_run_id", "training run (MLflow)"),
)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.7em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #f6f8fa; }
td.best { font-weight: bold; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dl.summary dt { color: #59636e; }
dl.summary dd { margin: 0; font-family: ui-monospace, monospace; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: 0.9em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.gallery figure { flex: 1 1 420px; }
details table { font-family: ui-monospace, monospace; font-size: 0.85em; }
.muted { color: #59636e; }
"""


@dataclass(frozen=True)
class ReportImage:
    """A PNG to show in the report, with a heading and a one-line explanation."""

    title: str
    png: bytes
    caption: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.png, (bytes, bytearray)) or not self.png.startswith(PNG_SIGNATURE):
            raise ValueError(
                f"report image {self.title!r} must be PNG bytes (starting with the PNG "
                "signature); render figures with aavae.reporting.plots.figure_png"
            )


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"width": 16}}`` -> ``{"model.width": "16"}`` (MLflow's param naming)."""
    flat: dict[str, str] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def render_report(
    metrics: Mapping[str, Any],
    params: Mapping[str, Any],
    images: Sequence[ReportImage] = (),
    *,
    title: str = "AAVAE evaluation report",
    notes: Sequence[str] = (),
) -> str:
    """The report as one HTML document.

    ``metrics`` is the evaluate pipeline's ``metrics.json`` content (``linear_top1``, ...,
    ``per_class`` and the same under ``baselines``); ``params`` the training parameters (flat
    or nested); ``images`` are shown in order; ``notes`` are short remarks under the title
    (e.g. where the parameters came from).
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping (metrics.json content), got {type(metrics).__name__}"
        )
    rows = _accuracy_rows(metrics)
    sections = [
        f"<h1>{_e(title)}</h1>",
        *(f'<p class="muted">{_e(note)}</p>' for note in notes),
        _summary(metrics),
        "<h2>Accuracy on the test split</h2>",
        _accuracy_table(rows, [*accuracy_columns(dict(metrics)), ("knn_top5", "kNN top-5")]),
        *(f"<p>{_e(text)}</p>" for text in [conclusion(dict(metrics))] if text),
        '<p class="muted">k labels/class: a linear classifier fitted on k labelled training images '
        "per class, mean &plusmn; sd over draws of them; all labels: on the whole training split; "
        "kNN: weighted cosine k-nearest neighbours. Baselines use the same protocol and draws. "
        "Best value per column in bold.</p>",
        "<h2>Per-class linear top-1 (recall)</h2>",
        _per_class_table(rows),
    ]
    if images:
        sections.append("<h2>Figures</h2>")
        sections.append('<div class="gallery">' + "".join(map(_figure, images)) + "</div>")
    sections += ["<h2>Training parameters</h2>", _params_table(params)]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n"
        "</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "&ndash;"


def _accuracy_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    model_name = f"{metrics.get('objective') or 'model'} (pretrained)"
    rows: list[tuple[str, Mapping[str, Any]]] = [(model_name, metrics)]
    baselines = metrics.get("baselines") or {}
    rows += [(f"{name} (baseline)", scores) for name, scores in baselines.items()]
    return rows


def _summary(metrics: Mapping[str, Any]) -> str:
    items = [
        f"<dt>{_e(label)}</dt><dd>{_e(metrics[key])}</dd>"
        for key, label in SUMMARY_KEYS
        if metrics.get(key) is not None
    ]
    notes = [note for note in (evaluation_note(dict(metrics)), short_training_note(metrics.get("epochs"))) if note]
    summary = f'<dl class="summary">{"".join(items)}</dl>' if items else ""
    return summary + "".join(f'<p class="note"><strong>Note:</strong> {_e(note)}</p>' for note in notes)


def _accuracy_table(rows: list[tuple[str, Mapping[str, Any]]], columns: list[tuple[str, str]]) -> str:
    best = {}
    for key, _ in columns:
        values = [s.get(key) for _, s in rows if isinstance(s.get(key), (int, float))]
        best[key] = max(values) if values else None
    head = "<tr><th>features</th>" + "".join(
        f'<th class="num">{_e(label)}</th>' for _, label in columns
    ) + "</tr>"
    lines = [head]
    for name, scores in rows:
        cells = []
        for key, _ in columns:
            value = scores.get(key)
            is_best = value is not None and value == best[key] and len(rows) > 1
            cls = "num best" if is_best else "num"
            sd = scores.get(f"{key}_sd")
            spread = f" &plusmn; {100 * sd:.1f}" if isinstance(sd, (int, float)) and value is not None else ""
            cells.append(f'<td class="{cls}">{_percent(value)}{spread}</td>')
        lines.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _per_class_table(rows: list[tuple[str, Mapping[str, Any]]]) -> str:
    classes: list[str] = []
    for _, scores in rows:
        for name in scores.get("per_class") or {}:
            if name not in classes:
                classes.append(name)
    if not classes:
        return '<p class="muted">No per-class scores.</p>'
    head = "<tr><th>class</th>" + "".join(f'<th class="num">{_e(n)}</th>' for n, _ in rows) + "</tr>"
    lines = [head]
    for cls in classes:
        cells = "".join(
            f'<td class="num">{_percent((s.get("per_class") or {}).get(cls))}</td>' for _, s in rows
        )
        lines.append(f"<tr><td>{_e(cls)}</td>{cells}</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _figure(image: ReportImage) -> str:
    data = base64.b64encode(bytes(image.png)).decode("ascii")
    caption = f"<figcaption>{_e(image.caption)}</figcaption>" if image.caption else ""
    return (
        f"<figure><h3>{_e(image.title)}</h3>"
        f'<img alt="{_e(image.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
    )


def _params_table(params: Mapping[str, Any]) -> str:
    flat = flatten_params(params)
    if not flat:
        return '<p class="muted">No training parameters were found.</p>'
    lines = "".join(
        f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>" for key, value in sorted(flat.items())
    )
    return (
        f"<details open><summary>{len(flat)} parameters</summary>"
        f"<table><tr><th>name</th><th>value</th></tr>{lines}</table></details>"
    )
