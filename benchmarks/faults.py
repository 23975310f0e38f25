"""Kill -9 pretraining and evaluation at seeded random moments; rerun; compare with a clean run.

What it checks (docs/reliability.md): a process killed with SIGKILL at *any* moment (kedro
starting, ingest writing, training between or during checkpoint writes, the model being
registered, evaluation writing its reports) loses nothing but time: rerunning the same
command completes, the final weights equal those of an uninterrupted run, the evaluation's
accuracies equal the uninterrupted evaluation's, no MLflow run stays RUNNING and no stale
pretraining lock record is left.

How. In a throw-away copy of the project (``benchmarks/project_copy.py``: code and config, no
data or runs), on ``--env test`` (digits at 16 x 16, a width-8 ResNet-18):

1. reference: ``kedro run --pipeline pretrain`` then ``--pipeline evaluate``, uninterrupted,
   each timed;
2. each trial, in a fresh copy: start the pretraining, SIGKILL its process group at a moment
   drawn uniformly from 5-95% of the reference's duration (``--seed``), then rerun the same
   command, unkilled, until it succeeds (at most ``--max-reruns`` times); the same for the
   evaluation; then compare.

A trial *survived* when both commands completed, every floating-point tensor of the final
``aavae_model.pt`` is within ``atol=1e-5, rtol=1e-4`` of the reference's (resume is exact, so
the differences found are 0 in practice; the tolerance only absorbs summation order), the
accuracies of ``metrics.json`` are within 1e-6 of the reference's, and no lock record is left.
``left_running`` counts runs of the trials' MLflow stores still RUNNING at the end.

Runs use ``pretrain.compile=false`` (``auto`` times compiled against eager steps on the CPU
and may pick differently in a rerun, which changes the floating-point path) and one
OpenMP thread (``--threads``; on a shared machine two contending threads are far slower).

    PYTHONPATH=src python benchmarks/faults.py                # 20 trials, 2 to 3 minutes each here
    PYTHONPATH=src python benchmarks/faults.py --trials 2     # a quick check

Then three trials of inputs nobody here made, each of which must end in the right answer or a
refusal that names the problem, never in a wrong number or a native crash:

* ``mismatched artifacts``: the reference's digits re-ingested at another size, then
  ``evaluate``: refused (exit status not 0, naming the model's data and the images'), and
  ``metrics.json`` left as it was;
* ``odd batch``: ``pretrain`` with ``pretrain.batch_size=63`` in a fresh copy: completes;
* ``bad served input``: the registered model loaded with ``mlflow.pyfunc``: float images and
  five channels are refused by name, uint8 images give finite features.

Output: one line for the reference, one per trial (where each kill landed, reruns, largest
weight difference, verdict), one per input trial, and as its last line
``trials: N survived: S lost: L left_running: R``, counting both kinds. Lost trials keep
their folder (with every command's log under ``logs/``) and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from project_copy import PROJECT_ROOT, artifact_root, copy_project  # noqa: I001 - beside this script

METRIC_KEYS = ("linear_top1", "linear_top5", "knn_top1")
#: The --env's artifact root inside a project copy (main() sets it: data/test for the default env).
ARTIFACTS = Path("data/test")
ATOL, RTOL, METRIC_TOLERANCE = 1e-5, 1e-4, 1e-6


@dataclass
class Phase:
    """One command of a trial: where the kill landed, how many reruns it took."""

    name: str
    killed_at: float | None = None  # seconds after start; None: it ended before the moment
    state_at_kill: str = ""
    reruns: int = 0
    completed: bool = False


@dataclass
class Trial:
    index: int
    phases: list[Phase] = field(default_factory=list)
    max_weight_difference: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems


def kedro_command(pipeline: str, env: str, epochs: int, extra: str = "") -> list[str]:
    params = f"pretrain.max_epochs={epochs},pretrain.compile=false" + (f",{extra}" if extra else "")
    return [sys.executable, "-m", "kedro", "run", "--pipeline", pipeline, "--env", env, "--params", params]


def process_env(threads: int) -> dict[str, str]:
    return {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start(project: Path, command: list[str], log: Path, threads: int) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=project, env=process_env(threads), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def run_to_end(project: Path, command: list[str], log: Path, threads: int, timeout: float = 1800) -> float:
    """Run ``command`` unkilled; its duration. Raises on failure, naming the log."""
    began = time.monotonic()
    process = start(project, command, log, threads)
    if process.wait(timeout=timeout) != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({process.returncode}); see {log}")
    return time.monotonic() - began


def kill_at(process: subprocess.Popen, moment: float) -> float | None:
    """SIGKILL the process group ``moment`` seconds after it started; None if it ended first."""
    began = time.monotonic()
    while time.monotonic() - began < moment:
        if process.poll() is not None:
            return None
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    process.wait()
    return time.monotonic() - began


def training_state(project: Path) -> str:
    """What a kill left behind: the newest readable checkpoint's step, or none yet."""
    from aavae.training import newest_loadable_checkpoint

    folders = sorted(p for p in (project / ARTIFACTS / "06_models/checkpoints").glob("*") if p.is_dir())
    found = [newest_loadable_checkpoint(folder) for folder in folders]
    found = [path for path in found if path is not None]
    if not found:
        return "no checkpoint yet"
    step = torch.load(found[0], map_location="cpu", weights_only=True, mmap=True)["global_step"]
    return f"{found[0].name} at step {step}"


def faulted_phase(project: Path, name: str, command: list[str], moment: float, threads: int,
                  max_reruns: int) -> Phase:
    phase = Phase(name)
    logs = project / "logs"
    first = start(project, command, logs / f"{name}-0.log", threads)
    phase.killed_at = kill_at(first, moment)
    if phase.killed_at is None and first.returncode == 0:
        phase.completed = True  # it finished before the moment came: nothing to rerun
        return phase
    if phase.killed_at is not None and name == "pretrain":
        phase.state_at_kill = training_state(project)
    for attempt in range(1, max_reruns + 1):
        phase.reruns = attempt
        process = start(project, command, logs / f"{name}-{attempt}.log", threads)
        if process.wait(timeout=1800) == 0:
            phase.completed = True
            break
    return phase


def running_runs(project: Path) -> int:
    from mlflow.tracking import MlflowClient

    store = project / "mlflow.db"
    if not store.is_file():
        return 0
    client = MlflowClient(f"sqlite:///{store}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, "attributes.status = 'RUNNING'")) if experiments else 0


def compare(project: Path, reference: Path, trial: Trial) -> None:
    """Fill ``trial``'s weight difference and problems against the reference project."""
    model = project / ARTIFACTS / "06_models/aavae_model.pt"
    if not model.is_file():
        trial.problems.append("no aavae_model.pt")
        return
    expected = torch.load(reference / ARTIFACTS / "06_models/aavae_model.pt", weights_only=True)["state_dict"]
    got = torch.load(model, weights_only=True)["state_dict"]
    if expected.keys() != got.keys():
        trial.problems.append("the model's keys differ from the reference's")
        return
    worst = 0.0
    for key, value in expected.items():
        if value.is_floating_point():
            worst = max(worst, (got[key].float() - value.float()).abs().max().item() if value.numel() else 0.0)
            if not torch.allclose(got[key], value, atol=ATOL, rtol=RTOL):
                trial.problems.append(f"weights differ: {key}")
        elif not torch.equal(got[key], value):
            trial.problems.append(f"weights differ: {key}")
    trial.max_weight_difference = worst
    metrics = project / ARTIFACTS / "08_reporting/metrics.json"
    if not metrics.is_file():
        trial.problems.append("no metrics.json")
        return
    ours, theirs = json.loads(metrics.read_text()), json.loads((reference / ARTIFACTS / "08_reporting/metrics.json").read_text())
    for key in METRIC_KEYS:
        if abs(ours[key] - theirs[key]) > METRIC_TOLERANCE:
            trial.problems.append(f"{key} {ours[key]:.6f} vs {theirs[key]:.6f}")
    if (project / "data/06_models/.pretrain.lock.json").exists():  # the holder's record
        trial.problems.append("a pretraining lock was left behind")


def describe(trial: Trial) -> str:
    parts = []
    for phase in trial.phases:
        where = ("not killed (it ended first)" if phase.killed_at is None
                 else f"killed at {phase.killed_at:.1f} s" + (f" ({phase.state_at_kill})" if phase.state_at_kill else ""))
        done = f"{phase.reruns} rerun{'' if phase.reruns == 1 else 's'}" + ("" if phase.completed else ", never completed")
        parts.append(f"{phase.name} {where}, {done}")
    difference = "" if trial.max_weight_difference is None else f"; max |dw| {trial.max_weight_difference:.2e}"
    verdict = "survived" if trial.survived else "LOST: " + "; ".join(trial.problems)
    return f"trial {trial.index}: " + "; ".join(parts) + f"{difference} -> {verdict}"


def _input_trial(index: int, name: str, check) -> Trial:
    """One trial of a bad input: ``check`` returns what went wrong (nothing: it survived)."""
    trial = Trial(index)
    trial.phases.append(Phase(name, completed=True))
    try:
        trial.problems.extend(check())
    except Exception as exc:  # noqa: BLE001 - any unexpected failure is a lost trial, said
        trial.problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return trial


def mismatched_artifacts(reference: Path, env: str, epochs: int, threads: int) -> list[str]:
    """The reference model evaluated after a re-ingest at another size: a named refusal."""
    metrics = reference / ARTIFACTS / "08_reporting/metrics.json"
    before = metrics.read_text()
    logs = reference / "logs"
    try:
        run_to_end(reference, kedro_command("ingest", env, epochs, "dataset.image_size=24"),
                   logs / "mismatch-ingest.log", threads)
        process = start(reference, kedro_command("evaluate", env, epochs), logs / "mismatch-evaluate.log", threads)
        status = process.wait(timeout=1800)
        said = " ".join((logs / "mismatch-evaluate.log").read_text().split())
    finally:
        run_to_end(reference, kedro_command("ingest", env, epochs), logs / "mismatch-restore.log", threads)
    problems = []
    if status == 0:
        problems.append("evaluate of a 16 px model on 24 px images exited 0")
    elif "was trained on" not in said or "24 x 24 px" not in said:
        problems.append(f"evaluate failed without naming the mismatch (exit {status}; see {logs})")
    if metrics.read_text() != before:
        problems.append("metrics.json was rewritten")
    return problems


def odd_batch(project: Path, env: str, threads: int) -> list[str]:
    """Pretraining on batches of 63 (it aborted natively in channels_last on AVX-512 CPUs)."""
    process = start(project, kedro_command("pretrain", env, 2, "pretrain.batch_size=63"),
                    project / "logs" / "odd-batch.log", threads)
    status = process.wait(timeout=1800)
    if status != 0:
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        return [f"pretrain with batch 63 ended with {how} (see {project / 'logs'})"]
    return [] if (project / ARTIFACTS / "06_models/aavae_model.pt").is_file() else ["no aavae_model.pt"]


def bad_served_input(reference: Path) -> list[str]:
    """The registered model refuses floats and five channels by name, and encodes uint8."""
    import mlflow
    import numpy as np

    record = json.loads((reference / ARTIFACTS / "06_models/registered_model.json").read_text())
    if not record.get("registered"):
        return [f"the reference registered no model ({record.get('reason')})"]
    mlflow.set_tracking_uri(f"sqlite:///{reference / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(record["model_uri"])
    side = int(model.metadata.metadata["image_size"])
    problems = []
    for name, images, expected in (
        ("floats", np.random.default_rng(0).random((2, side, side, 3)), "float64"),
        ("five channels", np.zeros((2, side, side, 5), np.uint8), "5 channels"),
    ):
        try:
            model.predict(images)
            problems.append(f"{name} were encoded instead of refused")
        except ValueError as refusal:
            if expected not in str(refusal):
                problems.append(f"{name}: refused without naming them ({str(refusal)[:120]})")
    features = np.asarray(model.predict(np.zeros((2, side, side, 3), np.uint8)))
    if features.shape[0] != 2 or not np.isfinite(features).all():
        problems.append(f"uint8 images gave {features.shape} features, or non-finite ones")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--env", default="test", help="the Kedro environment to run (default: test)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="pretrain.max_epochs of every run (20: training is most of a run, not startup)")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of every kedro run")
    parser.add_argument("--max-reruns", type=int, default=3, help="reruns allowed after a kill")
    parser.add_argument("--no-evaluate", action="store_true", help="kill pretraining only")
    parser.add_argument("--workdir", type=Path, help="where the copies go (default: a temporary folder)")
    args = parser.parse_args(argv)

    global ARTIFACTS
    ARTIFACTS = artifact_root(PROJECT_ROOT, args.env).relative_to(PROJECT_ROOT)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aavae-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    phases = ["pretrain"] + ([] if args.no_evaluate else ["evaluate"])
    print(f"faults: {args.trials} trials, seed {args.seed}, --env {args.env}, {args.epochs} epochs, "
          f"{args.threads} thread(s), in {workdir}", flush=True)

    reference = copy_project(_fresh(workdir / "reference"))
    durations = {name: run_to_end(reference, kedro_command(name, args.env, args.epochs),
                                  reference / "logs" / f"{name}.log", args.threads) for name in phases}
    print("reference: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in durations.items()), flush=True)

    rng = random.Random(args.seed)
    trials, left_running = [], 0
    for index in range(1, args.trials + 1):
        project = copy_project(_fresh(workdir / f"trial{index:02d}"))
        trial = Trial(index)
        for name in phases:
            moment = rng.uniform(0.05, 0.95) * durations[name]
            phase = faulted_phase(project, name, kedro_command(name, args.env, args.epochs), moment,
                                  args.threads, args.max_reruns)
            trial.phases.append(phase)
            if not phase.completed:
                trial.problems.append(f"{name} did not complete in {args.max_reruns} reruns (see {project / 'logs'})")
                break
        if trial.survived:
            compare(project, reference, trial)
        try:
            running = running_runs(project)
        except Exception as exc:  # a store no later run could open: the trial is lost
            running = 0
            trial.problems.append(f"the MLflow store does not open: {str(exc).splitlines()[0][:200]}")
        left_running += running
        if running:
            trial.problems.append(f"{running} MLflow run(s) left RUNNING")
        print(describe(trial), flush=True)
        trials.append(trial)
        if trial.survived:
            shutil.rmtree(project, ignore_errors=True)

    inputs = [
        ("mismatched artifacts", lambda: mismatched_artifacts(reference, args.env, args.epochs, args.threads)),
        ("odd batch", lambda: odd_batch(copy_project(_fresh(workdir / "odd-batch")), args.env, args.threads)),
        ("bad served input", lambda: bad_served_input(reference)),
    ] if not args.no_evaluate else []
    for offset, (name, check) in enumerate(inputs, start=len(trials) + 1):
        trial = _input_trial(offset, name, check)
        print(f"trial {trial.index}: {name} -> " + ("survived" if trial.survived else "LOST: " + "; ".join(trial.problems)),
              flush=True)
        trials.append(trial)

    survived = sum(trial.survived for trial in trials)
    print(f"trials: {len(trials)} survived: {survived} lost: {len(trials) - survived} left_running: {left_running}")
    return 0 if survived == len(trials) and not left_running else 1


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())
