"""``python -m aavae.report [metrics.json]``: the results table and where to look next."""

from __future__ import annotations

import json
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
        "Explore the runs:      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
        "   (then open http://127.0.0.1:5000)\n"
        "See the pipelines:     .venv/bin/kedro viz run"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
