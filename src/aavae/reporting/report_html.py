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

from aavae.reporting.plots import curves_figure, figure_png, off_scale_points, value_text
from aavae.reporting.report import (  # the printed report says the same
    accuracy_columns,
    conclusion,
    evaluation_note,
    percent_cell,
    saturated,
    score_rows,
    training_notes,
)

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
    """A PNG to show in the report (every one is rendered by :func:`aavae.reporting.plots.figure_png`
    or re-encoded by Pillow), with a heading and a one-line explanation."""

    title: str
    png: bytes
    caption: str = ""


#: Measured by benchmarks/validation_spike.py (docs/results.md): the weights of a spiking epoch
#: score normally with their batch's statistics; only the running averages lag.
VALIDATION_SPIKE_NOTE = (
    " A validation spike with no training spike is batch norm's running statistics lagging weights"
    " that move fast (the peak learning rate after warm-up, with few steps an epoch): validation"
    " normalises with those averages, training with each batch's own, and the same weights score"
    " normally with re-estimated statistics. The model did not diverge; the averages catch up as"
    " the learning rate decays (benchmarks/validation_spike.py shows it epoch by epoch)."
)


def loss_curves_image(curves: Mapping[str, Sequence[tuple[float, float]]], epochs: Any) -> ReportImage | None:
    """The pretraining loss plot (``curves``: ``train_loss``/``val_loss`` as (step, value)
    points), captioned with what it leaves out and why a curve is short or missing; None
    without a point to draw. ``epochs``: the epochs trained (a fraction for a run cut short)."""
    curves = {name: list(points) for name, points in curves.items()}
    if not any(curves.values()):
        return None
    figure = curves_figure(curves, "Pretraining loss: each epoch's mean, at its last step",
                           xlabel="training step", ylabel="loss")
    caption = ("Each point is an epoch's mean loss on the training batches and its loss on the fixed "
               "validation views, at the training step where the epoch ended."
               + _curves_note(curves, figure.axes[0].get_yscale()))
    short = isinstance(epochs, (int, float)) and epochs < 1
    if not curves.get("val_loss"):
        caption += (f" There is no validation curve: validation runs at the end of each full epoch, "
                    f"and this run stopped after {epochs:.2f} of one." if short
                    else " No validation loss was recorded.")
    if short and len(curves.get("train_loss", ())) == 1:
        caption += (" The training loss is a single point, the mean over the steps it ran: losses "
                    "are logged once an epoch.")
    return ReportImage("Loss curves", figure_png(figure), caption)


def _curves_note(curves: Mapping[str, Sequence[tuple[float, float]]], scale: str) -> str:
    """What the loss plot leaves out or bends, so nobody reads a clipped spike as missing."""
    off_scale = off_scale_points(curves)
    spikes = [f"{name} {value_text(value)} at step {step:,}" for name, points in off_scale.items() for step, value in points]
    their, s = ("their", "s") if len(spikes) > 1 else ("its", "")
    note = (f" {len(spikes)} point{s} far above {their} neighbours lie above the axis, marked with a triangle"
            f" and {their} value ({'; '.join(spikes)}), so they do not flatten the rest." if spikes else "")
    if off_scale and set(off_scale) <= {"val_loss"}:
        note += VALIDATION_SPIKE_NOTE
    if scale != "linear":
        note += f" On a {scale} axis: the values span more than a factor of 20."
    return note


#: Epochs before which the decoder draws about the same blur for every image (the default digits
#: run at 30 epochs, ResNet-18 at width 32: one blur for all at epoch 10, a hint of each digit at 30).
FIRST_LIKENESS_EPOCHS = 10


def reconstructions_caption(epochs: Any) -> str:
    """What the reconstruction grid shows and what to expect of it after ``epochs`` of training."""
    text = ("Held-out images, the augmented view the encoder saw, and the decoder's reconstruction of "
            "the original, at the end of pretraining.")
    if not isinstance(epochs, (int, float)):
        return text
    if epochs < FIRST_LIKENESS_EPOCHS:
        return text + (f" After {epochs:g} epochs expect nearly the same grey blur for every image, close to "
                       "the mean image: the decoder does not follow its input yet (the default digits run "
                       f"still draws one blur for all at epoch {FIRST_LIKENESS_EPOCHS}).")
    return text + (f" After {epochs:g} epochs expect blurs that take each image's shape more closely the "
                   "longer training runs, not copies (the default digits run shows a hint of each digit at "
                   "epoch 30): the decoder rebuilds the original from an augmented view, and the features, "
                   "not these pictures, are what the table scores. The paper trains for 3,200 epochs.")


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
    """The report as one HTML document: ``metrics`` (``metrics.json``'s content), the training
    ``params`` (flat or nested), the ``images`` in order and short ``notes`` under the title
    (e.g. where the parameters came from)."""
    rows = score_rows(dict(metrics), " (baseline)")
    columns = [*accuracy_columns(dict(metrics)), ("knn_top5", "kNN top-5")]
    flat = [key for key, _ in columns if saturated(dict(metrics), key)]
    columns = sorted(columns, key=lambda column: column[0] in flat)  # the flat ones last
    sections = [
        f"<h1>{_e(title)}</h1>",
        *(f'<p class="muted">{_e(note)}</p>' for note in notes),
        _summary(metrics),
        "<h2>Accuracy on the test split</h2>",
        _accuracy_table(rows, columns, flat),
        *(f"<p>{_e(text)}</p>" for text in [conclusion(dict(metrics))] if text),
        '<p class="muted">k labels/class: a linear classifier fitted on k labelled training images '
        "per class, mean &plusmn; sd over draws of them; all labels: on the whole training split; "
        "kNN: weighted cosine k-nearest neighbours. Baselines use the same protocol and draws. "
        "Best value per column in bold"
        + (f"; {_e(', '.join(label for key, label in columns if key in flat))}: 100% for every row, "
           "which separates nothing, so last and unmarked" if flat else "") + ".</p>",
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


def _summary(metrics: Mapping[str, Any]) -> str:
    items = [
        f"<dt>{_e(label)}</dt><dd>{_e(metrics[key])}</dd>"
        for key, label in SUMMARY_KEYS
        if metrics.get(key) is not None
    ]
    notes = [note for note in [evaluation_note(dict(metrics)), *training_notes(dict(metrics))] if note]
    summary = f'<dl class="summary">{"".join(items)}</dl>' if items else ""
    return summary + "".join(f'<p class="note"><strong>Note:</strong> {_e(note)}</p>' for note in notes)


def _accuracy_table(rows: list[tuple[str, Mapping[str, Any]]], columns: list[tuple[str, str]],
                    unmarked: list[str]) -> str:
    best = {key: max((s[key] for _, s in rows if isinstance(s.get(key), (int, float))), default=None)
            for key, _ in columns if key not in unmarked}
    lines = ["<tr><th>features</th>" + "".join(f'<th class="num">{_e(label)}</th>' for _, label in columns) + "</tr>"]
    for name, scores in rows:
        cells = []
        for key, _ in columns:
            value = scores.get(key)
            is_best = value is not None and value == best.get(key) and len(rows) > 1
            cls = "num best" if is_best else "num"
            cells.append(f'<td class="{cls}">{percent_cell(scores, key, "&ndash;", "&plusmn;")}</td>')
        lines.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _per_class_table(rows: list[tuple[str, Mapping[str, Any]]]) -> str:
    classes = list(dict.fromkeys(name for _, scores in rows for name in scores.get("per_class") or {}))
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
