"""The default run (``make run``) over several seeds and precisions: mean +- sd of its table.

Each run is the two commands ``make run`` makes, ``kedro run --pipeline pretrain`` then
``kedro run --pipeline evaluate``, with the seed of the views, the pretraining and the
evaluation (the few-label draws, random init) set to ``s`` and both precisions to ``P``,
and ``pretrain.resume=false`` so every seed trains from scratch. Nothing else changes: the
digits, the model, the 30 epochs of ``conf/base``.

    PYTHONPATH=src python benchmarks/default_run.py                       # seeds 0-2, fp32 and bf16
    PYTHONPATH=src python benchmarks/default_run.py --seeds 1 --precisions 32-true   # one run

bf16 is skipped on a CPU without a fast bf16 path (AMX or AVX512-BF16): there a bf16 step
runs about a hundred times slower than fp32 (``benchmarks/pretrain_throughput.py`` prints
both), and ``precision=auto`` would never pick it; ``--force-bf16`` runs it anyway.

The runs overwrite the project's ``data/`` artifacts like ``make run`` does; each run's
``metrics.json`` is copied to ``data/08_reporting/default_run/<precision>/seed<s>/`` and
all rows go to ``data/08_reporting/default_run/results.json``. Run it alone on the machine:
on two cores another busy process slows torch many times over.

Output: a header (date, CPU, the exact command), one line per run (and under it the pretrain's
``compile=auto`` decision as logged), and last, per precision,
a Markdown table of mean +- sd over seeds (the same columns as ``make run``'s table) and the
lead of the pretrained features over the best baseline on the column the table leads with,
against the goal (at least 2 points, and more than twice the seeds' sd).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)]

from aavae.common.hardware import cpu_has_fast_bf16  # noqa: E402
from aavae.reporting.report import accuracy_columns  # noqa: E402 - after the path is set
from benchmarks.project_copy import artifact_root  # noqa: E402

METRICS = Path("08_reporting/metrics.json")  # under the --env's artifact root
KEPT = Path("data/08_reporting/default_run")
#: The goal of issue 24: ahead of the best baseline by this many points ...
GOAL_POINTS = 2.0
#: ... and by more than this many standard deviations of the seeds.
GOAL_SDS = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"],
                        choices=["32-true", "bf16-mixed"])
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 without a fast bf16 CPU path")
    parser.add_argument("--env", default="base", help="the Kedro environment (default: base)")
    parser.add_argument("--kedro", default=str(Path(sys.executable).parent / "kedro"),
                        help="the kedro executable (default: the one beside this Python)")
    parser.add_argument("--params", default="", help="more kedro --params for every run, e.g. model.width=16")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run_once(args: argparse.Namespace, precision: str, seed: int) -> tuple[dict[str, Any], dict[str, float], str]:
    """One seed's pretrain and evaluate; its metrics.json, the seconds of each command and the
    pretrain's ``compile=auto`` decision as it logged it (empty when the step was not timed)."""
    params = (f"pretrain.seed={seed},views.seed={seed},evaluate.seed={seed},pretrain.resume=false,"
              f"pretrain.precision={precision},evaluate.precision={precision}")
    if args.params:
        params += f",{args.params}"
    seconds, decision = {}, ""
    for pipeline in ("pretrain", "evaluate"):
        command = [args.kedro, "run", "--pipeline", pipeline, "--env", args.env, "--params", params]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
        seconds[pipeline] = time.perf_counter() - started
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"{shlex.join(command)} failed (exit {done.returncode}); its output is above")
        decision = decision or next((line[line.index("compile=auto:"):] for line in done.stdout.splitlines()
                                     if "compile=auto:" in line), "")
    written = artifact_root(PROJECT_ROOT, args.env) / METRICS
    metrics = json.loads(written.read_text())
    kept = PROJECT_ROOT / KEPT / precision / f"seed{seed}"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy2(written, kept / METRICS.name)
    return metrics, seconds, decision


def rows_of(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table's rows: the pretrained features, then each baseline."""
    return {f"{metrics.get('objective')} (pretrained)": metrics, **(metrics.get("baselines") or {})}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(runs: list[dict[str, Any]]) -> list[str]:
    """Mean +- sd over seeds of every cell of make run's table (accuracies in %)."""
    columns = [c for c in accuracy_columns(runs[0]) if c[0] != "linear_top5"]
    lines = ["| features | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in rows_of(runs[0]):
        cells = [spread([100 * rows_of(m)[name][key] for m in runs]) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def lead_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The lead over the best baseline on the leading column, per seed and against the goal."""
    key, heading = accuracy_columns(runs[0])[0]
    model = [100 * m[key] for m in runs]
    leads = [100 * m[key] - max(100 * b[key] for b in m["baselines"].values()) for m in runs]
    lines = [f"lead over the best baseline on '{heading}', per seed: "
             + ", ".join(f"{v:+.2f}" for v in leads) + f" points (mean {statistics.mean(leads):+.2f})"]
    if len(runs) > 1:
        sd = statistics.stdev(model)
        met = statistics.mean(leads) >= GOAL_POINTS and statistics.mean(leads) > GOAL_SDS * sd
        lines.append(f"goal (>= {GOAL_POINTS:g} points and > {GOAL_SDS:g} x the seeds' sd of the model's "
                     f"{sd:.2f}): {'met' if met else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores, fast bf16: {cpu_has_fast_bf16()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    precisions = list(args.precisions)
    if "bf16-mixed" in precisions and not cpu_has_fast_bf16() and not args.force_bf16:
        precisions.remove("bf16-mixed")
        print("bf16-mixed skipped: this CPU has no AMX or AVX512-BF16, where a bf16 step is about a "
              "hundred times slower than fp32 (--force-bf16 runs it anyway)")
    results: dict[str, list[dict[str, Any]]] = {}
    for precision in precisions:
        for seed in range(args.seeds):
            metrics, seconds, decision = run_once(args, precision, seed)
            results.setdefault(precision, []).append({**metrics, "seconds": seconds, "seed": seed})
            key, heading = accuracy_columns(metrics)[0]
            print(f"[default_run] {precision} seed {seed}: pretrain {seconds['pretrain']:.0f} s, evaluate "
                  f"{seconds['evaluate']:.0f} s; {heading} {100 * metrics[key]:.2f}%, all labels "
                  f"{100 * metrics['linear_top1']:.2f}%", flush=True)
            if decision:
                print(f"    {decision}", flush=True)
    out = PROJECT_ROOT / KEPT / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    for precision, runs in results.items():
        minutes = statistics.mean(r["seconds"]["pretrain"] + r["seconds"]["evaluate"] for r in runs) / 60
        print(f"\n## {precision}: {len(runs)} seed(s), {minutes:.1f} min a run (pretrain + evaluate); "
              "accuracies in %, mean ± sd over seeds\n")
        print("\n".join(table(runs)))
        print()
        print("\n".join(lead_lines(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
