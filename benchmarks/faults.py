"""Kill -9 pretraining and evaluation at random moments, and feed every command bad input: each
must end in the right answer or a refusal that names the problem.

What it checks (docs/reliability.md), in a throw-away copy of the project
(``benchmarks/project_copy.py``: code and config, no data or runs) on ``--env test`` (digits at
16 x 16, a width-8 ResNet-18):

1. reference: ``kedro run --pipeline pretrain`` then ``--pipeline evaluate``, uninterrupted,
   each timed;
2. kill trials, each in a fresh copy: start the pretraining, SIGKILL its process group at a
   moment drawn uniformly from 5-95% of the reference's duration (``--seed``), then rerun the
   same command, unkilled, until it succeeds (at most ``--max-reruns`` times); the same for the
   evaluation. A kill trial *survived* when both commands completed, every floating-point
   tensor of the final ``aavae_model.pt`` is within ``atol=1e-5, rtol=1e-4`` of the
   reference's (resume is exact: the differences found are 0; the tolerance only absorbs
   summation order), the accuracies of ``metrics.json`` are within 1e-6 of the reference's,
   and no lock record is left;
3. input trials, in the trained reference while the kill trials run (each ``kedro run`` takes
   one core; a fresh copy for the odd batch): the cases of issue 29 (``input_trials``), each
   through the command a user runs (``kedro run``, ``python -m aavae.serving.serve`` and an
   HTTP request), and the reference's own logs: a normal pretrain + evaluate logs no warning
   that does not apply. One *survived* when it got the right answer, or a refusal: exit status
   1 (never a signal), an ``Error:`` message of at most four lines naming what it must name, no
   traceback and no advice to load with ``weights_only=False``, and every file of ``data/`` as
   it was before. The hostile files of issue 29 §4 are read within a memory bound: the
   command's peak resident memory (its own, from ``wait4``) stays under the reference
   evaluation's plus 512 MiB, where the file asks for 1 GiB or more.

Runs use ``pretrain.compile=false`` (``auto`` times compiled against eager steps on the CPU
and may pick differently in a rerun, which changes the floating-point path) and one OpenMP
thread (``--threads``; on a shared machine two contending threads are far slower).

    PYTHONPATH=src python benchmarks/faults.py                   # 4 kill trials and every input trial
    PYTHONPATH=src python benchmarks/faults.py --trials 20       # the long run
    PYTHONPATH=src python benchmarks/faults.py --trials 0 --only server   # the server's input trials

Output: progress on stderr; on stdout one table (trial, kind, expected, what happened,
survived) and as its last line ``trials: N survived: S lost: L left_running: R``, where
``left_running`` counts MLflow runs still RUNNING in any copy at the end. Lost trials keep
their folder (every command's log is under its ``logs/``) and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# MLflow and the project at the top, not in the functions that use them: the input trials run in
# a thread beside the kill trials, and mlflow's package imports itself in a cycle that a second
# thread importing it at the same moment finds half made ("cannot import name '_get_store'").
import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from PIL import ExifTags, Image
from project_copy import PROJECT_ROOT, artifact_root, copy_project  # noqa: I001 - beside this script

from aavae.training import newest_loadable_checkpoint

METRIC_KEYS = ("linear_top1", "linear_top5", "knn_top1")
#: The --env's artifact root inside a project copy (main() sets it: data/test for the default env).
ARTIFACTS = Path("data/test")
ATOL, RTOL, METRIC_TOLERANCE = 1e-5, 1e-4, 1e-6
#: A refusal's message: its ``Error:`` line and at most this many lines in all (a parameter
#: error lists each bad key on a line of its own), besides the pointer to its traceback's log.
MAX_ERROR_LINES = 4
#: How far over a normal evaluation's peak resident memory a hostile file may take `evaluate`.
MEMORY_MARGIN = 512 * 2**20
#: WARNING lines a normal pretrain + evaluate may log on this machine because they apply. None
#: does on a CPU: every warning that fires is checked by the "normal run" trial.
WARNINGS_THAT_APPLY: tuple[str, ...] = ()
SERVER_LIMIT_MB = 1  # the served model's --max-request-mb (and --max-in-flight-mb) in its trials


# -- commands -------------------------------------------------------------------------------

@dataclass
class Ran:
    """How a command ended: its exit status (negative: the signal), output and peak memory."""

    status: int
    output: str
    peak_rss: int  # bytes: the largest of the process and the children it waited for

    def error(self) -> list[str]:
        """The lines of the ``Error:`` message it ended with, without the traceback pointer."""
        lines = self.output.rstrip().splitlines()
        starts = [index for index, line in enumerate(lines) if line.startswith("Error: ")]
        return [line for line in lines[starts[-1]:] if not line.startswith("(The traceback is in")] if starts else []

    def said(self) -> str:
        """What it ended with, in one line for the table."""
        how = f"signal {signal.Signals(-self.status).name}" if self.status < 0 else f"exit {self.status}"
        message = " ".join(" ".join(self.error()).split())
        return f"{how}: {_clip(message)}" if message else how


def kedro_command(pipeline: str, env: str, epochs: int, extra: str = "") -> list[str]:
    params = f"pretrain.max_epochs={epochs},pretrain.compile=false" + (f",{extra}" if extra else "")
    return [sys.executable, "-m", "kedro", "run", "--pipeline", pipeline, "--env", env, "--params", params]


def process_env(threads: int) -> dict[str, str]:
    return {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start(project: Path, command: list[str], log: Path, threads: int,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=project, env={**process_env(threads), **(extra_env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def execute(project: Path, command: list[str], log: Path, threads: int, timeout: float = 1800) -> Ran:
    """Run ``command`` to its end (its process group is killed after ``timeout`` seconds)."""
    process = start(project, command, log, threads)
    timer = threading.Timer(timeout, _kill_group, (process.pid,))
    timer.start()
    try:  # wait4, not Popen.wait: it gives the child's peak resident memory
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Ran(process.returncode, log.read_text(errors="replace"), usage.ru_maxrss * 1024)


def run_to_end(project: Path, command: list[str], log: Path, threads: int) -> tuple[float, Ran]:
    """Run ``command`` unkilled: its duration and outcome. Raises on failure, naming the log."""
    began = time.monotonic()
    ran = execute(project, command, log, threads)
    if ran.status != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({ran.status}); see {log}")
    return time.monotonic() - began, ran


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- kill trials ----------------------------------------------------------------------------

@dataclass
class Phase:
    """One command of a kill trial: where the kill landed, how many reruns it took."""

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
        if execute(project, command, logs / f"{name}-{attempt}.log", threads).status == 0:
            phase.completed = True
            break
    return phase


def running_runs(project: Path) -> int:
    store = project / "mlflow.db"
    if not store.is_file():
        return 0
    client = MlflowClient(f"sqlite:///{store}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments, "attributes.status = 'RUNNING'")) if experiments else 0


@dataclass
class Uninterrupted:
    """What the reference's uninterrupted runs ended with, read before the input trials change it."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict

    @classmethod
    def read(cls, reference: Path) -> Uninterrupted:
        return cls(torch.load(reference / ARTIFACTS / "06_models/aavae_model.pt", weights_only=True)["state_dict"],
                   json.loads((reference / ARTIFACTS / "08_reporting/metrics.json").read_text()))


def compare(project: Path, uninterrupted: Uninterrupted, trial: Trial) -> None:
    """Fill ``trial``'s weight difference and problems against the uninterrupted runs (their
    metrics too, where the trial evaluated)."""
    model = project / ARTIFACTS / "06_models/aavae_model.pt"
    if not model.is_file():
        trial.problems.append("no aavae_model.pt")
        return
    expected = uninterrupted.state_dict
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
    if (project / "data/06_models/.pretrain.lock.json").exists():  # the holder's record
        trial.problems.append("a pretraining lock was left behind")
    metrics = project / ARTIFACTS / "08_reporting/metrics.json"
    if "evaluate" not in [phase.name for phase in trial.phases]:
        return
    if not metrics.is_file():
        trial.problems.append("no metrics.json")
        return
    ours, theirs = json.loads(metrics.read_text()), uninterrupted.metrics
    for key in METRIC_KEYS:
        if abs(ours[key] - theirs[key]) > METRIC_TOLERANCE:
            trial.problems.append(f"{key} {ours[key]:.6f} vs {theirs[key]:.6f}")


def describe(trial: Trial) -> str:
    parts = []
    for phase in trial.phases:
        where = ("not killed (it ended first)" if phase.killed_at is None
                 else f"killed at {phase.killed_at:.1f} s" + (f" ({phase.state_at_kill})" if phase.state_at_kill else ""))
        done = f"{phase.reruns} rerun{'' if phase.reruns == 1 else 's'}" + ("" if phase.completed else ", never completed")
        parts.append(f"{phase.name} {where}, {done}")
    difference = "" if trial.max_weight_difference is None else f"; largest weight difference {trial.max_weight_difference:.2e}"
    return "; ".join(parts) + difference


# -- input trials: what they share -----------------------------------------------------------

@dataclass
class Bench:
    """The trained copy the input trials run in, and how to run a command there."""

    project: Path
    env: str
    epochs: int
    threads: int
    normal_logs: dict[str, str]  # the reference's pretrain and evaluate output
    normal_evaluate_rss: int  # the reference evaluation's peak resident memory, bytes

    @property
    def artifacts(self) -> Path:
        return self.project / ARTIFACTS

    def kedro(self, log: str, pipeline: str, params: str = "", env: str | None = None,
              prefix: tuple[str, ...] = ()) -> Ran:
        return execute(self.project, [*prefix, *kedro_command(pipeline, env or self.env, self.epochs, params)],
                       self.project / "logs" / f"{log}.log", self.threads)


@dataclass
class InputTrial:
    name: str
    expected: str
    check: Callable[[Bench], tuple[str, list[str]]]  # what happened, and what went wrong


@dataclass
class Row:
    """One line of the table."""

    name: str
    kind: str  # kill | input
    expected: str
    happened: str
    problems: list[str]

    @property
    def survived(self) -> bool:
        return not self.problems


def refusal_problems(ran: Ran, *names: str) -> list[str]:
    """Why ``ran`` is not a named refusal (see the module docstring), naming each of ``names``."""
    problems = []
    if ran.status == 0:
        problems.append("exit 0: not refused")
    elif ran.status < 0:
        problems.append(f"ended by signal {signal.Signals(-ran.status).name}")
    if "Traceback" in ran.output:
        problems.append("a traceback was printed")
    if "weights_only" in ran.output:
        problems.append("torch's weights_only advice was printed")
    error = ran.error()
    if not error:
        return [*problems, "no 'Error:' message"]
    if len(error) > MAX_ERROR_LINES:
        problems.append(f"the message takes {len(error)} lines")
    message = " ".join(" ".join(error).split())
    problems += [f"the message does not name {name!r}" for name in names if name not in message]
    return problems


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: size and modification time (the lock file is not an artifact)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".pretrain.lock")}


def destroyed(before: dict[str, tuple[int, int]], folder: Path) -> list[str]:
    after = files_of(folder)
    changed = [name for name, state in before.items() if after.get(name) != state]
    return [f"{len(changed)} earlier file(s) changed or removed, e.g. {changed[0]}"] if changed else []


def refused_safely(bench: Bench, log: str, pipeline: str, params: str, names: tuple[str, ...],
                   env: str | None = None, before_any_node: bool = False,
                   prefix: tuple[str, ...] = ()) -> tuple[Ran, list[str]]:
    """Run a command that must be refused, naming ``names``, with ``data/`` left as it was."""
    before = files_of(bench.project / "data")
    ran = bench.kedro(log, pipeline, params, env, prefix)
    problems = refusal_problems(ran, *names)
    if before_any_node and "Running node:" in ran.output:
        problems.append("a node ran before the refusal")
    return ran, problems + destroyed(before, bench.project / "data")


def _clip(text: str, width: int = 150) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


# -- §1 provenance ----------------------------------------------------------------------------

def _warnings(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()
            if (" WARNING " in line or "Warning:" in line) and not any(w in line for w in WARNINGS_THAT_APPLY)]


def normal_run_warnings(bench: Bench) -> tuple[str, list[str]]:
    found = [f"{name}: {line}" for name, text in bench.normal_logs.items() for line in _warnings(text)]
    return (f"{len(found)} warning(s)" + (f": {_clip(found[0])}" if found else ""),
            [f"a warning that does not apply: {_clip(line, 300)}" for line in found])


def normal_evaluate_provenance(bench: Bench) -> tuple[str, list[str]]:
    found = [line for line in _warnings(bench.normal_logs["evaluate"])
             if any(word in line.lower() for word in ("provenance", "fingerprint", "sha256", "recorded"))]
    metrics = json.loads((bench.artifacts / "08_reporting/metrics.json").read_text())
    problems = [f"a provenance warning: {_clip(line, 300)}" for line in found]
    if metrics.get("evaluation") != "same_data":
        problems.append(f"metrics.json says evaluation {metrics.get('evaluation')!r}, not same_data")
    return f"{len(found)} provenance warning(s), evaluation {metrics.get('evaluation')}", problems


def view_policy_key_deleted(bench: Bench) -> tuple[str, list[str]]:
    policy = bench.artifacts / "05_model_input/view_policy.json"
    original = policy.read_bytes()
    values = json.loads(original)
    del values["jitter_p"]
    policy.write_text(json.dumps(values, indent=2))
    try:
        ran, problems = refused_safely(bench, "view-policy", "train", "", ("view_policy.json", "missing jitter_p"))
    finally:
        policy.write_bytes(original)
    return ran.said(), problems


def mismatched_artifacts(bench: Bench) -> tuple[str, list[str]]:
    """The trained model evaluated after a re-ingest at another size: a named refusal. The
    24 px images stay for the transfer trial."""
    ingest = bench.kedro("ingest-24px", "ingest", "dataset.image_size=24")
    if ingest.status != 0:
        return ingest.said(), [f"the re-ingest at 24 px failed ({ingest.said()})"]
    ran, problems = refused_safely(bench, "mismatch-evaluate", "evaluate", "", ("was trained on", "24 x 24 px"))
    return ran.said(), problems


def checkpoint_of_other_data(bench: Bench) -> tuple[str, list[str]]:
    """A project checkpoint of the 16 px model, evaluated on the 24 px images: a transfer."""
    checkpoint = next((bench.artifacts / "06_models/checkpoints").glob("*/last.ckpt")).relative_to(bench.project)
    ran = bench.kedro("transfer", "evaluate", f"evaluate.checkpoint={checkpoint}")
    if ran.status != 0:
        return ran.said(), [f"the transfer evaluation failed ({ran.said()})"]
    kind = json.loads((bench.artifacts / "08_reporting/metrics.json").read_text()).get("evaluation")
    report = (bench.artifacts / "08_reporting/report.html").read_text()
    client = MlflowClient(f"sqlite:///{bench.project / 'mlflow.db'}")
    newest = client.search_runs([client.get_experiment_by_name("aavae").experiment_id],
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    tag = newest.data.tags.get("evaluation.kind")
    problems = [what for what, wrong in [
        (f"metrics.json says evaluation {kind!r}", kind != "transfer"),
        ("report.html does not say it is a transfer evaluation", "Transfer evaluation" not in report),
        (f"the MLflow run's evaluation.kind is {tag!r}", tag != "transfer"),
    ] if wrong]
    return f"exit 0, evaluation {kind!r} in metrics.json, report.html and MLflow", problems


# -- §2 parameters ----------------------------------------------------------------------------

def parameter_refused(params: str, key: str, *also: str) -> Callable[[Bench], tuple[str, list[str]]]:
    def check(bench: Bench) -> tuple[str, list[str]]:
        ran, problems = refused_safely(bench, "params-" + params, "pretrain", params, (f"'{key}'", *also),
                                       before_any_node=True)
        return ran.said(), problems
    return check


def one_class_dataset(bench: Bench) -> tuple[str, list[str]]:
    folder = bench.project.parent / "one-class"
    for split in ("train", "test"):
        for index in range(6):
            _save_png(folder / split / "only" / f"{index}.png", np.full((16, 16, 3), 40 * index, np.uint8))
    ran = bench.kedro("one-class", "ingest", f"dataset.path={folder},dataset.image_size=16", env="imagefolder")
    said = " ".join(ran.output.split())
    named = f"imagefolder from {folder} has 1 class (only)" in said and "will refuse it" in said
    problems = ([] if ran.status == 0 else [f"ingest failed ({ran.said()})"]) + \
        ([] if named else ["ingest did not name the dataset as one class, which evaluate will refuse"])
    return ("exit 0, ingest said: the evaluate pipeline needs two classes" if named else ran.said()), problems


# -- §3 images and archives -------------------------------------------------------------------

#: An upright image's four quadrants: any turn or flip shows.
QUADRANTS = np.array([[[220, 30, 30], [30, 200, 30]], [[30, 30, 220], [230, 230, 40]]], np.uint8)


def exif_rotated_jpeg(bench: Bench) -> tuple[str, list[str]]:
    """A phone photo: stored a quarter turn off, with EXIF Orientation 6 saying so."""
    upright = np.repeat(np.repeat(QUADRANTS, 16, axis=0), 16, axis=1)  # 32 x 32
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    folder = bench.project.parent / "photos"
    for split in ("train", "test"):
        for label in ("a", "b"):
            for index in range(4):
                path = folder / split / label / f"{index}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    ran = bench.kedro("exif", "ingest", f"dataset.path={folder},dataset.image_size=16", env="imagefolder")
    if ran.status != 0:
        return ran.said(), [f"ingest failed ({ran.said()})"]
    images = np.load(root_of(bench.project, "imagefolder") / "03_primary/images_train/images.npy")
    corners = images[0][[4, 4, 12, 12], [4, 12, 4, 12]].astype(int)  # the quadrants' centres
    off = int(np.abs(corners - QUADRANTS.reshape(4, 3)).max())
    return (f"exit 0, quadrants within {off} of upright's colours",
            [] if off < 60 else ["the photo was ingested turned or flipped"])


def archive_with_duplicate_name(bench: Bench) -> tuple[str, list[str]]:
    """A tar of the photos' layout, then one file appended again under the same name (tar -r)."""
    archive = bench.project.parent / "appended.tar"
    with tarfile.open(archive, "w") as tar:
        for split in ("train", "test"):
            for label, shade in (("a", 50), ("b", 200)):
                for index in range(4):
                    _add_png(tar, f"{split}/{label}/{index}.png", np.full((16, 16, 3), shade, np.uint8))
    with tarfile.open(archive, "a") as tar:
        _add_png(tar, "train/a/0.png", np.full((16, 16, 3), 200, np.uint8))
    ran, problems = refused_safely(bench, "duplicate", "ingest", f"dataset.path={archive},dataset.image_size=16",
                                   ("train/a/0.png", "two files of this name"), env="imagefolder")
    return ran.said(), problems


def read_only_data(bench: Bench) -> tuple[str, list[str]]:
    """Every folder of data/ made read-only. Root writes anyway: its command runs without the
    capabilities that override permissions. The message names what the user may fix, a folder
    or an artifact, not a writer's temporary (``.<name>.tmp-<pid>-<host>``)."""
    folders = [bench.project / "data", *(p for p in (bench.project / "data").rglob("*") if p.is_dir())]
    modes = {folder: folder.stat().st_mode for folder in folders}
    for folder in folders:
        folder.chmod(0o555)
    try:
        prefix = (sys.executable, "-c", WITHOUT_ROOT_OVERRIDES) if os.geteuid() == 0 else ()
        ran, problems = refused_safely(bench, "read-only", "pretrain", "", ("Cannot write", "Permission denied"),
                                       prefix=prefix)
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)
    if ".tmp-" in " ".join(ran.error()):
        problems.append("the message names a temporary file, not the folder or artifact to fix")
    return ran.said(), problems


#: ``python -c WITHOUT_ROOT_OVERRIDES COMMAND...`` runs COMMAND without the capabilities that let
#: root ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER): it drops them from
#: the bounding set (prctl PR_CAPBSET_DROP), which the exec then applies.
WITHOUT_ROOT_OVERRIDES = """import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2, 3):
    if libc.prctl(24, capability, 0, 0, 0):
        sys.exit(f"prctl(PR_CAPBSET_DROP) failed: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
"""


class _Payload:
    """Unpickled as ``os.system(command)``: what a malicious file carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def code_running_model(bench: Bench) -> tuple[str, list[str]]:
    model = bench.artifacts / "06_models/aavae_model.pt"
    original, marker = model.read_bytes(), bench.project.parent / "the-model-ran-code"
    torch.save({"state_dict": {}, "spec": _Payload(f"touch {marker}")}, model)
    try:
        ran, problems = refused_safely(bench, "code-running", "evaluate", "",
                                       (f"{os.system.__module__}.system", "it was not loaded"))
    finally:
        model.write_bytes(original)
    return ran.said(), problems + (["the file's code ran"] if marker.exists() else [])


# -- §4 hostile torch files, read within a memory bound -----------------------------------------

class _Storage:
    """A float storage of ``numel`` elements: pickled as torch.save refers to its record "0"."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


class _Tensor:
    def __init__(self, numel: int) -> None:
        self.storage, self.numel = _Storage(numel), numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.numel,), (1,), False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Storage) else None


def _torch_zip(path: Path, pickled: bytes, inflated_bytes: int = 0) -> Path:
    """``pickled`` packed as torch.save packs a file, with, if ``inflated_bytes``, a record "0" of
    that many zeros, deflated (torch.save stores records uncompressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in (("data.pkl", pickled), ("byteorder", b"little"), ("version", b"3\n")):
            archive.writestr(f"archive/{name}", data, compress_type=zipfile.ZIP_STORED)
        if inflated_bytes:
            with archive.open("archive/data/0", "w", force_zip64=True) as record:
                zeros = bytes(16 * 2**20)
                for _ in range(inflated_bytes // len(zeros)):
                    record.write(zeros)
    return path


def deflated_record(bench: Bench, folder: Path) -> Path:
    """About 5 MB that inflate to a 1 GiB tensor."""
    pickled = io.BytesIO()
    _TorchPickler(pickled, protocol=2).dump({"state_dict": {"weight": _Tensor(2**28)}})
    return _torch_zip(folder / "deflated.ckpt", pickled.getvalue(), inflated_bytes=2**30)


def deeply_nested(bench: Bench, folder: Path) -> Path:
    """A dict whose key is a tuple nested a million deep (hashing it crashed torch's unpickler)."""
    key = b")" + b"\x85" * (10**6 - 1)  # (), then a tuple of the item below, a million times
    pickled = b"\x80\x02}X\x0a\x00\x00\x00state_dict}" + key + b"K\x01ss."
    return _torch_zip(folder / "nested.ckpt", pickled)


def oversized_spec(bench: Bench, folder: Path) -> Path:
    """The trained bundle, its spec's h_dim set to 60,000 (15 GB of parameters at width 8)."""
    bundle = torch.load(bench.artifacts / "06_models/aavae_model.pt", weights_only=True)
    bundle["spec"] = {**bundle["spec"], "h_dim": 60_000}
    torch.save(bundle, folder / "oversized-spec.pt")
    return folder / "oversized-spec.pt"


def hostile_checkpoint(make: Callable[[Bench, Path], Path], *names: str) -> Callable[[Bench], tuple[str, list[str]]]:
    def check(bench: Bench) -> tuple[str, list[str]]:
        folder = bench.project.parent / "downloads"
        folder.mkdir(exist_ok=True)
        path = make(bench, folder)
        ran, problems = refused_safely(bench, path.stem, "evaluate", f"evaluate.checkpoint={path}", (str(path), *names))
        bound = bench.normal_evaluate_rss + MEMORY_MARGIN
        if ran.peak_rss > bound:
            problems.append(f"peak memory {ran.peak_rss / 2**20:,.0f} MB, over {bound / 2**20:,.0f} MB")
        return f"{ran.said()} (peak {ran.peak_rss / 2**20:,.0f} MB)", problems
    return check


# -- §5 the served model ------------------------------------------------------------------------

@dataclass
class Answer:
    status: int | str  # the HTTP status, or the error that stood for one
    message: str
    retry_after: str | None
    seconds: float


class ServedModel:
    """``python -m aavae.serving.serve`` for the bench's registered model, started on first use."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port = 0

    def ensure(self, bench: Bench) -> None:
        if self.process is not None:
            return
        record = json.loads((bench.artifacts / "06_models/registered_model.json").read_text())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        log = bench.project / "logs" / "serve.log"
        self.process = start(bench.project, [sys.executable, "-m", "aavae.serving.serve", "-m", record["model_uri"],
                                             "-p", str(self.port), "--max-request-mb", str(SERVER_LIMIT_MB)],
                             log, bench.threads, {"MLFLOW_TRACKING_URI": f"sqlite:///{bench.project / 'mlflow.db'}"})
        deadline = time.monotonic() + 300
        while self.post(b"{}", timeout=5).status != 400:  # the first answer: a request of no images
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}")
            time.sleep(0.5)

    def post(self, body: bytes | list[bytes], timeout: float = 60) -> Answer:
        """POST ``body`` (a list of bytes: chunked) as JSON to /invocations."""
        began = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", "/invocations", iter(body) if isinstance(body, list) else body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            message = json.loads(response.read() or b"{}").get("message", "")
            return Answer(response.status, message, response.getheader("Retry-After"), time.monotonic() - began)
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as error:
            return Answer(type(error).__name__, "", None, time.monotonic() - began)
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None:
            _kill_group(self.process.pid)
            self.process.wait()
            self.process = None


SERVER = ServedModel()
ONE_PIXEL = b'{"inputs": [[[[0, 0, 0]]]]}'


def served(expected_status: int, *bodies: bytes | list[bytes], names: tuple[str, ...] = ()) -> Callable[[Bench], tuple[str, list[str]]]:
    """Each body must be answered ``expected_status`` with a short message naming ``names``."""
    def check(bench: Bench) -> tuple[str, list[str]]:
        SERVER.ensure(bench)
        answers = [SERVER.post(body) for body in bodies]
        problems = [f"answered {answer.status}: {_clip(answer.message, 200)}" for answer in answers
                    if answer.status != expected_status]
        problems += [f"a {len(answer.message):,}-character message" for answer in answers if len(answer.message) > 400]
        problems += [f"the message does not name {name!r}" for answer in answers for name in names
                     if name not in answer.message]
        return "; ".join(f"{answer.status}: {_clip(answer.message, 90)}" for answer in answers), problems
    return check


def chunked_over_the_limit() -> list[bytes]:
    """1.5 times the server's limit, sent in 64 KiB chunks, no Content-Length."""
    return [b"[" * 2**16] * (3 * SERVER_LIMIT_MB * 2**20 // 2**17)


def over_the_in_flight_budget(bench: Bench) -> tuple[str, list[str]]:
    """A client holds a request at the size limit open (its body half sent): the budget is
    taken, and another request is answered 503 at once; once the holder leaves, 200."""
    SERVER.ensure(bench)
    holder = socket.create_connection(("127.0.0.1", SERVER.port))
    try:
        holder.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n{\"inputs\": " % (SERVER_LIMIT_MB * 2**20))
        for _ in range(100):  # until the server has admitted the holder (a small request is 200 before)
            busy = SERVER.post(ONE_PIXEL, timeout=30)
            if busy.status != 200:
                break
            time.sleep(0.1)
    finally:
        holder.close()
    deadline, freed = time.monotonic() + 60, SERVER.post(ONE_PIXEL)
    while freed.status == 503 and time.monotonic() < deadline:
        time.sleep(float(freed.retry_after or 1))
        freed = SERVER.post(ONE_PIXEL)
    problems = [what for what, wrong in [
        (f"answered {busy.status} while the budget was taken", busy.status not in (429, 503)),
        ("no Retry-After header", busy.retry_after is None),
        (f"answered after {busy.seconds:.1f} s, not at once", busy.seconds > 5),
        (f"answered {freed.status} once the holder left", freed.status != 200),
    ] if wrong]
    return (f"{busy.status} in {busy.seconds:.2f} s (Retry-After {busy.retry_after}); "
            f"{freed.status} once the holder left"), problems


# -- the trials before this round: an odd batch, the registered model in-process ---------------

def odd_batch(bench: Bench) -> tuple[str, list[str]]:
    """Pretraining on batches of 63 (it aborted natively in channels_last on AVX-512 CPUs), in
    a fresh copy."""
    project = copy_project(_fresh(bench.project.parent / "odd-batch"))
    ran = execute(project, kedro_command("pretrain", bench.env, 2, "pretrain.batch_size=63"),
                  project / "logs" / "odd-batch.log", bench.threads)
    if ran.status != 0:
        return ran.said(), [f"pretrain with batch 63 ended with {ran.said()} (see {project / 'logs'})"]
    model = (project / ARTIFACTS / "06_models/aavae_model.pt").is_file()
    shutil.rmtree(project, ignore_errors=True)
    return "exit 0", [] if model else ["no aavae_model.pt"]


def bad_served_input(bench: Bench) -> tuple[str, list[str]]:
    """The registered model loaded with mlflow.pyfunc refuses floats and five channels by name,
    and encodes uint8."""
    record = json.loads((bench.artifacts / "06_models/registered_model.json").read_text())
    if not record.get("registered"):
        return "no model", [f"the reference registered no model ({record.get('reason')})"]
    mlflow.set_tracking_uri(f"sqlite:///{bench.project / 'mlflow.db'}")
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
    return f"floats and five channels refused, uint8 gave {features.shape} features", problems


def input_trials() -> list[InputTrial]:
    """In this order: each trial leaves the copy as it found it, except where a later one needs
    what it did (the 24 px images of "mismatched artifacts" for the transfer)."""
    refused = "refused in a few lines naming "
    return [
        InputTrial("normal run: no stray warning", "a pretrain + evaluate logs no WARNING that does not apply",
                   normal_run_warnings),
        InputTrial("normal evaluate: provenance", "no provenance warning; evaluation same_data",
                   normal_evaluate_provenance),
        InputTrial("view policy with a key deleted", refused + "the key; nothing written", view_policy_key_deleted),
        InputTrial("pretrain.learning_rate=true", refused + "the key, before any node",
                   parameter_refused("pretrain.learning_rate=true", "pretrain.learning_rate")),
        InputTrial("pretrain.seed=-5", refused + "the key, before any node",
                   parameter_refused("pretrain.seed=-5", "pretrain.seed")),
        InputTrial("model.width=100000000", refused + "the key, before any node",
                   parameter_refused("model.width=100000000", "model.width")),
        InputTrial("model.width=1024 (16 GB)", refused + "the size, before any node",
                   parameter_refused("model.width=1024", "model", "GB in float32")),
        InputTrial("pretrain=5", refused + "the group, before any node", parameter_refused("pretrain=5", "pretrain")),
        InputTrial("code-running aavae_model.pt", refused + "the class; nothing run", code_running_model),
        InputTrial("read-only data/", refused + "the path and cause; nothing written", read_only_data),
        InputTrial("deflated-record checkpoint", refused + f"the file; peak memory < normal + {MEMORY_MARGIN >> 20} MB",
                   hostile_checkpoint(deflated_record, "compressed")),
        InputTrial("pickle nested 10^6 deep", refused + f"the file; no crash; memory < normal + {MEMORY_MARGIN >> 20} MB",
                   hostile_checkpoint(deeply_nested, "nest")),
        InputTrial("bundle spec with h_dim 60000", refused + f"the size; memory < normal + {MEMORY_MARGIN >> 20} MB",
                   hostile_checkpoint(oversized_spec, "GB in float32")),
        InputTrial("one-class dataset", "ingested; ingest names it as one class evaluate will refuse", one_class_dataset),
        InputTrial("EXIF-rotated JPEG", "ingested upright", exif_rotated_jpeg),
        InputTrial("archive with a name twice", refused + "the member; the earlier ingest intact",
                   archive_with_duplicate_name),
        InputTrial("mismatched artifacts", refused + "both datasets; metrics.json untouched", mismatched_artifacts),
        InputTrial("checkpoint of other data", "scored as a transfer: metrics.json, report.html, MLflow tag",
                   checkpoint_of_other_data),
        InputTrial("server: chunked body over the limit", "413, a short message",
                   served(413, chunked_over_the_limit(), names=("over this server's limit",))),
        InputTrial("server: JSON its parser refuses", "400 each, a short message",
                   served(400, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                          b'{"inputs": [[[[' + b"1" * 5000 + b"]]]]}")),
        InputTrial("server: unknown params key", "400 naming the key, not the pixels",
                   served(400, b'{"inputs": [[[[0, 0, 0]]]], "params": {"retrun_mu": true}}', names=("retrun_mu",))),
        InputTrial("server: over the in-flight budget", "503 + Retry-After at once; 200 once freed",
                   over_the_in_flight_budget),
        InputTrial("bad served input (pyfunc)", "floats and 5 channels refused by name; uint8 encoded", bad_served_input),
        InputTrial("odd batch", "pretrain with batch 63 completes", odd_batch),
    ]


def run_input_trial(trial: InputTrial, bench: Bench) -> Row:
    try:
        happened, problems = trial.check(bench)
    except Exception as exc:  # noqa: BLE001 - any unexpected failure is a lost trial, said
        happened, problems = f"{type(exc).__name__}", [f"{type(exc).__name__}: {_clip(str(exc).splitlines()[0] if str(exc) else '', 200)}"]
    return Row(trial.name, "input", trial.expected, happened, problems)


# -- the table --------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    lines = ["| trial | kind | expected | what happened | survived |", "|---|---|---|---|---|"]
    for row in rows:
        happened = row.happened if row.survived else f"{row.happened} -- LOST: {'; '.join(row.problems)}"
        cells = [row.name, row.kind, row.expected, happened, "yes" if row.survived else "NO"]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _add_png(tar: tarfile.TarFile, name: str, pixels: np.ndarray) -> None:
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="PNG")
    member = tarfile.TarInfo(name)
    member.size = data.tell()
    data.seek(0)
    tar.addfile(member, data)


def root_of(project: Path, env: str) -> Path:
    """``artifact_root``, without OmegaConf's deprecation warning about what Kedro calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return artifact_root(project, env)


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def progress(text: str) -> None:
    print(f"[faults] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="kill trials (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--env", default="test", help="the Kedro environment to run (default: test)")
    parser.add_argument("--epochs", type=int, default=4, help="pretrain.max_epochs of every run")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads of every kedro run")
    parser.add_argument("--max-reruns", type=int, default=3, help="reruns allowed after a kill")
    parser.add_argument("--no-evaluate", action="store_true", help="kill trials kill pretraining only "
                        "(the reference is evaluated all the same: input trials need it)")
    parser.add_argument("--only", default="", help="comma-separated parts of the input trials' names to run "
                        "(default: all; 'none': no input trial)")
    parser.add_argument("--workdir", type=Path, help="where the copies go (default: a temporary folder)")
    args = parser.parse_args(argv)

    global ARTIFACTS
    ARTIFACTS = root_of(PROJECT_ROOT, args.env).relative_to(PROJECT_ROOT)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="aavae-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = [part.strip() for part in args.only.split(",") if part.strip()]
    inputs = [trial for trial in input_trials() if not wanted or any(part in trial.name for part in wanted)]
    phases = ["pretrain"] + ([] if args.no_evaluate else ["evaluate"])
    progress(f"{args.trials} kill trials, {len(inputs)} input trials, seed {args.seed}, --env {args.env}, "
             f"{args.epochs} epochs, {args.threads} thread(s), in {workdir}")

    reference = copy_project(_fresh(workdir / "reference"))
    normal = {name: run_to_end(reference, kedro_command(name, args.env, args.epochs), reference / "logs" / f"{name}.log",
                               args.threads) for name in ("pretrain", "evaluate")}
    progress("reference: " + ", ".join(f"{name} {seconds:.1f} s" for name, (seconds, _) in normal.items()))
    uninterrupted = Uninterrupted.read(reference)

    # The input trials run in the reference beside the kill trials (one core each): each kedro
    # run is single-threaded, and the kill trials compare with what was read above.
    bench = Bench(reference, args.env, args.epochs, args.threads,
                  {name: ran.output for name, (_, ran) in normal.items()}, normal["evaluate"][1].peak_rss)
    input_rows: list[Row] = []
    beside = threading.Thread(target=run_input_trials, args=(inputs, bench, input_rows), daemon=True)
    rng = random.Random(args.seed)
    kill_rows, left_running = [], 0
    try:
        beside.start()
        for index in range(1, args.trials + 1):
            moments = {name: rng.uniform(0.05, 0.95) * normal[name][0] for name in phases}
            row, running = kill_trial(index, workdir, args, moments, uninterrupted)
            kill_rows.append(row)
            left_running += running
        beside.join()
    finally:
        SERVER.stop()
    left_running += _count_running(reference, [])

    rows = kill_rows + input_rows
    print(table(rows))
    survived = sum(row.survived for row in rows)
    print(f"trials: {len(rows)} survived: {survived} lost: {len(rows) - survived} left_running: {left_running}")
    return 0 if survived == len(rows) and not left_running else 1


def kill_trial(index: int, workdir: Path, args: argparse.Namespace, moments: dict[str, float],
               uninterrupted: Uninterrupted) -> tuple[Row, int]:
    """A fresh copy, each command killed at its moment and rerun; the row and its RUNNING runs."""
    project = copy_project(_fresh(workdir / f"trial{index:02d}"))
    trial = Trial(index)
    for name, moment in moments.items():
        phase = faulted_phase(project, name, kedro_command(name, args.env, args.epochs), moment,
                              args.threads, args.max_reruns)
        trial.phases.append(phase)
        if not phase.completed:
            trial.problems.append(f"{name} did not complete in {args.max_reruns} reruns (see {project / 'logs'})")
            break
    if trial.survived:
        compare(project, uninterrupted, trial)
    running = _count_running(project, trial.problems)
    progress(f"kill {index}: {describe(trial)} -> " + ("survived" if trial.survived else "LOST: " + "; ".join(trial.problems)))
    if trial.survived:
        shutil.rmtree(project, ignore_errors=True)
    return Row(f"kill {index}", "kill", "reruns reach the uninterrupted weights and metrics", describe(trial),
               trial.problems), running


def run_input_trials(inputs: list[InputTrial], bench: Bench, rows: list[Row]) -> None:
    """Each input trial in turn, then a row for runs the refusals left RUNNING, if any."""
    for trial in inputs:
        rows.append(run_input_trial(trial, bench))
        progress(f"{trial.name}: {rows[-1].happened}" + ("" if rows[-1].survived else " -- LOST: " + "; ".join(rows[-1].problems)))
    SERVER.stop()
    problems: list[str] = []
    _count_running(bench.project, problems)
    rows.extend(Row("input trials' MLflow store", "input", "no run left RUNNING", problem, [problem]) for problem in problems)


def _count_running(project: Path, problems: list[str]) -> int:
    try:
        running = running_runs(project)
    except Exception as exc:  # a store no later run could open: the trial is lost
        problems.append(f"the MLflow store does not open: {str(exc).splitlines()[0][:200]}")
        return 0
    if running:
        problems.append(f"{running} MLflow run(s) left RUNNING")
    return running


if __name__ == "__main__":
    sys.exit(main())
