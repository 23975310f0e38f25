"""``python -m aavae.report [metrics.json]``: the results table and where to look next."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

KEYS = ("linear_top1", "linear_top5", "knn_top1")


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
