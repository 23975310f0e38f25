"""``python -m aavae.report [metrics.json]``: the results table and where to look next."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

KEYS = ("linear_top1", "linear_top5", "knn_top1")


def short_training_note(epochs: Any) -> str | None:
    """What a reader should know about a model trained for under one epoch (None otherwise).

    ``epochs`` is the fraction actually trained (``pretrain.max_time_minutes`` can stop a run
    mid-epoch); so little training can leave the features below a random network's."""
    if not isinstance(epochs, (int, float)) or epochs >= 1:
        return None
    return (f"The model trained for {epochs:.2f} of an epoch (pretrain.max_time_minutes stopped it, "
            "or pretrain.max_epochs is under 1): too little for its features to beat a random "
            "network's, so a pretrained row below random_init says the run was short, not that "
            "the method failed. Train longer (pretrain.max_time_minutes, or resume: the same "
            "command continues from the checkpoint).")


def results_table(metrics: dict[str, Any]) -> str:
    """A Markdown table: the learned features beside each baseline."""
    rows = [(f"{metrics.get('objective', 'model')} (pretrained)", metrics)]
    rows += [(name, scores) for name, scores in metrics.get("baselines", {}).items()]
    lines = ["| features | linear top-1 | linear top-5 | kNN top-1 |", "|---|---:|---:|---:|"]
    for name, scores in rows:
        cells = [f"{100 * scores[k]:.2f}%" if scores.get(k) is not None else "-" for k in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "data/08_reporting/metrics.json")
    if not path.is_file():
        print(f"No results at {path}: run `make run` (or kedro run) first.", file=sys.stderr)
        return 1
    metrics = json.loads(path.read_text())
    print(f"\nDataset: {metrics.get('dataset')}  (epochs: {metrics.get('epochs')})\n")
    print(results_table(metrics))
    note = short_training_note(metrics.get("epochs"))
    if note:
        print(f"\nNote: {note}")
    print(
        f"\nLinear-eval accuracy: {100 * metrics['linear_top1']:.2f}%\n"
        f"The report:            {path.parent / 'report.html'}\n"
        "Explore the runs:      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db\n"
        f"                       then open {runs_address(metrics.get('training_run_id'))}\n"
        "See the pipelines:     .venv/bin/kedro viz run --no-browser   (then open http://127.0.0.1:4141)"
    )
    return 0


def runs_address(run_id: str | None, store: Path = Path("mlflow.db")) -> str:
    """The training runs' page of ``mlflow ui``. MLflow 3 opens an experiment on its GenAI
    overview (Traces 0) unless the address asks for the "Model training" view."""
    experiment = None
    if run_id and store.is_file():
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as connection:
                row = connection.execute("SELECT experiment_id FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            experiment = row[0] if row else None
        except sqlite3.Error:  # not an MLflow store, or one being migrated: the generic address
            experiment = None
    page = f"experiments/{experiment}/runs" if experiment is not None else "experiments"
    return f"http://127.0.0.1:5000/#/{page}?workflowType=machine_learning"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
