"""``python -m aavae.reporting.report [metrics.json]``: the results table and where to look next."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any


def accuracy_columns(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, heading) of every accuracy column, led by the few-label probe's smallest count.

    The printed table and report.html show the same columns in the same order."""
    counts = sorted({int(key.split("_")[2]) for key in metrics if key.startswith("few_label_") and key.endswith("_top1")})
    return [*((f"few_label_{k}_top1", f"{k} label{'s' if k > 1 else ''}/class") for k in counts),
            ("linear_top1", "linear top-1 (all labels)"), ("linear_top5", "linear top-5"), ("knn_top1", "kNN top-1")]


def score_rows(metrics: dict[str, Any], baseline_suffix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(name, scores) of every row of the table: the pretrained model, then each baseline."""
    baselines = (metrics.get("baselines") or {}).items()
    return [(f"{metrics.get('objective') or 'model'} (pretrained)", metrics),
            *((f"{name}{baseline_suffix}", scores) for name, scores in baselines)]


def saturated(metrics: dict[str, Any], key: str) -> bool:
    """Whether every row that has the score scored 100 % (top-5 on ten classes): such a
    column separates nothing, so it never leads, is never the best and comes last."""
    scored = [s[key] for _, s in score_rows(metrics) if isinstance(s.get(key), (int, float))]
    return bool(scored) and min(scored) >= 1.0


def leads(metrics: dict[str, Any]) -> list[tuple[str, float, str]]:
    """Per column: (heading, model minus the best baseline in points, that baseline's name)."""
    baselines = metrics.get("baselines") or {}
    found = []
    for key, heading in accuracy_columns(metrics):
        if saturated(metrics, key):
            continue
        scored = {name: b[key] for name, b in baselines.items() if isinstance(b.get(key), (int, float))}
        if scored and isinstance(metrics.get(key), (int, float)):
            best = max(scored, key=scored.get)
            found.append((heading, 100 * (metrics[key] - scored[best]), best))
    return found


def conclusion(metrics: dict[str, Any]) -> str | None:
    """What the table says, in one paragraph computed from it (None without baselines)."""
    found = leads(metrics)
    if not found:
        return None
    heading, lead, best = found[0]
    model = metrics.get("objective") or "model"
    key, draws = accuracy_columns(metrics)[0][0], metrics.get("few_label_draws")
    spread = (f" (sd over {draws} draws of the labelled images: {100 * metrics[f'{key}_sd']:.1f}; "
              "every row sees the same draws)" if draws and f"{key}_sd" in metrics else "")
    verdict = f"ahead of the best baseline ({best}) by {lead:.1f}" if lead > 0 else (
        f"behind the best baseline ({best}) by {-lead:.1f}" if lead < 0 else f"level with the best baseline ({best})")
    others = ", ".join(f"{h}: {value:+.1f}" for h, value, _ in found[1:])
    text = f"With {heading.replace('/class', ' per class')}, the {model} features are {verdict} points{spread}."
    if others:
        text += f" Lead over the best baseline elsewhere, in points: {others}."
    full = next((value for h, value, _ in found[1:] if h.startswith("linear top-1")), None)
    if lead > 0 and full is not None and full <= 0:  # ahead with few labels, not with all of them
        text += (" Learned features earn their keep where labels are scarce; with every label a linear "
                 "classifier on raw pixels catches up on easy images.")
    return text


def training_notes(metrics: dict[str, Any]) -> list[str]:
    """What a reader should know about how long the model trained: that its time limit stopped
    it (``cut_by_time_limit``, copied from the model bundle), and what under one epoch (``epochs``,
    the fraction trained) means."""
    epochs, notes = metrics.get("epochs"), []
    if cut := metrics.get("cut_by_time_limit"):
        notes.append(f"Training was stopped by its time limit (pretrain.max_time_minutes={cut['max_time_minutes']}) "
                     f"after {epochs} of the {cut['planned_epochs']} epochs its schedule spans; the same command "
                     "resumes it from its checkpoint.")
    if isinstance(epochs, (int, float)) and epochs < 1:
        notes.append(f"The model trained for {epochs:.2f} of an epoch: too little for its features to beat a "
                     "random network's, so a pretrained row below random_init says the run was short, not "
                     "that the method failed.")
    return notes


def evaluation_note(metrics: dict[str, Any]) -> str | None:
    """Whose data the scores are on, when it is not simply the model's own (None then)."""
    if metrics.get("evaluation") == "transfer":
        trained_on, scored_on = (str(metrics.get(key))[:12] for key in ("model_data_sha256", "data_sha256"))
        return (f"Transfer evaluation: a model trained on {metrics.get('model_dataset') or 'other data'} (data "
                f"sha256 {trained_on}), scored on {metrics.get('dataset')} ({scored_on}): not its own data's scores.")
    if metrics.get("evaluation") == "data_unrecorded":
        return ("Training data unknown: the evaluated model does not record the data it was trained on "
                "(a paper checkpoint, or a file written before models recorded it), so whether these "
                "are its own dataset's scores cannot be said.")
    return None


def results_table(metrics: dict[str, Any]) -> str:
    """A Markdown table: the learned features beside each baseline."""
    columns = accuracy_columns(metrics)
    lines = ["| features | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, scores in score_rows(metrics):
        lines.append(f"| {name} | " + " | ".join(percent_cell(scores, k) for k, _ in columns) + " |")
    return "\n".join(lines)


def percent_cell(scores: dict[str, Any], key: str, missing: str = "-", plus_minus: str = "±") -> str:
    """``66.50%``, ``66.50% ± 4.0`` where the score has a spread over draws, ``missing`` when absent."""
    value, sd = scores.get(key), scores.get(f"{key}_sd")
    if not isinstance(value, (int, float)):
        return missing
    return f"{100 * value:.2f}%" + (f" {plus_minus} {100 * sd:.1f}" if isinstance(sd, (int, float)) else "")


def results_text(metrics: dict[str, Any], report: Path, store: Path = Path("mlflow.db")) -> str:
    """What ``make run`` and ``kedro run --pipeline evaluate`` print at the end: the table, what
    it says, how long the model trained, and where to look next (``report``: report.html,
    ``store``: the MLflow SQLite store)."""
    stopped = ", stopped by pretrain.max_time_minutes" if metrics.get("cut_by_time_limit") else ""
    parts = [f"Dataset: {metrics.get('dataset')}  (epochs: {metrics.get('epochs')}{stopped})"]
    parts += [textwrap.fill(text, 100) for text in [evaluation_note(metrics)] if text]
    parts.append(results_table(metrics))
    parts += [textwrap.fill(text, 100) for text in [conclusion(metrics)] if text]
    parts += [textwrap.fill(f"Note: {note}", 100) for note in training_notes(metrics)]
    parts.append(
        f"Linear-eval accuracy: {100 * metrics['linear_top1']:.2f}%\n"
        f"The report:            {report}\n"
        "Explore the runs:      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db\n"
        f"                       then open {runs_address(metrics.get('training_run_id'), store)}\n"
        "See the pipelines:     .venv/bin/kedro viz run --no-browser   (then open http://127.0.0.1:4141)"
    )
    return "\n" + "\n\n".join(parts)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "data/08_reporting/metrics.json")
    if not path.is_file():
        print(f"No results at {path}: run `make run` (or kedro run) first.", file=sys.stderr)
        return 1
    print(results_text(json.loads(path.read_text()), path.parent / "report.html"))
    return 0


#: The share key of the runs-table view with the headline metrics as columns (stored by
#: ``aavae.tracking.store_headline_view`` on the experiment).
HEADLINE_VIEW = "headline"


def experiment_address(experiment: str | None, host: str = "127.0.0.1", port: int | str = 5000) -> str:
    """The page of ``mlflow ui`` with an experiment's training runs and the headline columns (all
    experiments without one). MLflow 3 opens an experiment on its GenAI overview (Traces 0)
    unless the address asks for the "Model training" view."""
    if experiment is None:
        return f"http://{host}:{port}/#/experiments?workflowType=machine_learning"
    return (f"http://{host}:{port}/#/experiments/{experiment}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={HEADLINE_VIEW}")


def runs_address(run_id: str | None, store: Path = Path("mlflow.db")) -> str:
    """:func:`experiment_address` of the experiment of ``run_id`` in the SQLite ``store``."""
    row = None
    if run_id and store.is_file():
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
                row = connection.execute("SELECT experiment_id FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        except sqlite3.Error:  # not an MLflow store, or one being migrated: the generic address
            row = None
    return experiment_address(row[0] if row else None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
