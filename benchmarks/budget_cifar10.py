"""AAVAE, VAE and AE on CIFAR-10 under the same budget and seeds, then the same evaluation.

Each objective is pretrained by the project's own ``pretrain`` pipeline and scored by its own
``evaluate`` pipeline, run in-process through Kedro's API (``KedroSession``), so the numbers
are what ``kedro run`` produces. Everything but the objective is the same for every run:

* the data (ingested by the pretrain pipeline of each run, ~10 s on CIFAR-10) and the views
  of the dataset environment (``cifar10`` for the official python archive, ``imagefolder``
  for an image tree or archive such as ``../shared/datasets/cifar10_jpeg.tar.gz``);
* a narrow ResNet-18 with the CIFAR stem (``--width``, ``--latent-dim``), batch size, Adam
  at ``--lr`` with a linear warm-up (``--warmup-fraction`` of the run) and a cosine decay
  that ends with the budget: with ``--budget-minutes`` (equal wall clock) each run times
  its first steps and fits its schedule to the time left (``pretrain.schedule_to_time_limit``),
  so every objective ends its schedule instead of being cut mid-decay; with
  ``--budget-steps`` (equal steps: AAVAE's views make its steps slower) every run makes the
  same number of steps. ``--schedule constant`` keeps the old constant rate;
* ``pretrain.kl_coeff`` and ``pretrain.weight_decay`` at the project's default for the
  objective (kl 0.1 for ``vae``, the paper's, 0 otherwise; weight decay 1e-6 for the paper's
  ``ae``, 0 otherwise), stated explicitly since ``conf/cifar10`` pins them;
* ``--seeds N`` runs (default 3) of every objective, seed ``s`` setting ``pretrain.seed``
  and ``evaluate.seed``; the table shows mean +- standard deviation over them;
* the frozen-feature linear probe and kNN on the full test split. The baselines do not
  depend on the objective, so they are computed with the first objective of each seed: the
  same architecture at random init once per seed (a new draw each time), raw pixels once
  (it is deterministic, and the slow part).

All runs go to one MLflow experiment (``--experiment``, default ``budget_cifar10``), named
``<objective>/seed<s>/pretrain`` and ``<objective>/seed<s>/evaluate`` (``pretrain.seed`` is
also a logged parameter and a ``seed`` tag). kedro-mlflow reads the experiment and
run names only from ``mlflow.yml``, so the script writes a copy of the project's ``conf/base``
and the dataset environment to ``data/08_reporting/budget_cifar10/conf`` with those two
names changed, and runs the sessions with that ``conf_source``: the parameters and catalog
are the project's, and the copy records the configuration that ran. The recipe itself goes
in as runtime parameters, as ``kedro run --params`` would pass it.

Each run's ``metrics.json``, ``report.html``, ``reconstructions.png`` and ``aavae_model.pt``
are copied to ``data/08_reporting/budget_cifar10/<objective>/seed<s>/`` before the next run
overwrites them; the table also goes to ``results.md``, every run to ``results.json``.

    PYTHONPATH=src python benchmarks/budget_cifar10.py [--budget-minutes 5] [--seeds 3] [--width 32]
    PYTHONPATH=src python benchmarks/budget_cifar10.py --budget-steps 400   # equal steps instead
    PYTHONPATH=src python benchmarks/budget_cifar10.py --budget-minutes 0.5 --subset 500 --seeds 1  # smoke
    PYTHONPATH=src python benchmarks/budget_cifar10.py --set views.crop_scale=[0.2,1.0]  # any other knob

``--set GROUP.KEY=VALUE`` (repeatable) changes one more parameter of the views, model,
pretrain or evaluate group for every objective; it is checked against the project's schema
before anything runs and printed in the header.

On a shared machine whose cores other jobs keep busy, ``--threads 1`` can be much faster.

Output: a header (date, CPU, cores, budget and fairness, the exact command), one
``[budget]`` progress line per run and phase, and as its last lines a Markdown table:
``objective | runs | epochs reached | images seen | linear top-1 | kNN top-1`` with one row per
objective and one per baseline, accuracies in % as mean +- sd over the seeds. Epochs reached
(mean) counts optimisation steps, as the run's model bundle records them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from benchmarks.project_copy import artifact_root  # noqa: E402 - where an environment's artifacts go

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "datasets" / "cifar10_jpeg.tar.gz"
OBJECTIVES = ("aavae", "vae", "ae")
BASELINES = ("random_init", "raw_pixels")
BASELINE_LABELS = {"random_init": "random init", "raw_pixels": "raw pixels"}
# Where the official CIFAR-10 python version is recognised; anything else is an image tree.
CIFAR10_PYTHON_NAMES = {"cifar-10-python.tar.gz", "cifar-10-batches-py"}
# Relative to the project root, like the catalog's paths.
REPORT_DIR = Path("data/08_reporting/budget_cifar10")
SUBSET_DIR = Path("data/01_raw/budget_cifar10_subset")
# Relative to the environment's artifact root (data/<env>, conf/<env>/globals.yml).
METRICS = Path("08_reporting/metrics.json")
DATASET_CARD = Path("03_primary/dataset_card.json")
KEPT_ARTIFACTS = (
    Path("06_models/aavae_model.pt"),
    METRICS,
    Path("08_reporting/report.html"),
    Path("08_reporting/reconstructions.png"),
)


@dataclass(frozen=True)
class Recipe:
    """What every objective shares: architecture, optimiser, budget, evaluation."""

    budget_minutes: float | None  # equal wall clock per run ...
    budget_steps: int | None  # ... or equal steps
    width: int
    latent_dim: int
    batch_size: int
    learning_rate: float
    warmup_fraction: float
    schedule: str
    snapshot_every: int
    # (group, key, value) from --set, layered last: the same change for every objective.
    overrides: tuple[tuple[str, str, Any], ...] = ()

    def runtime_params(
        self, objective: str, dataset: dict[str, Any], baselines: list[str], seed: int = 0
    ) -> dict[str, Any]:
        """Parameters layered over the dataset environment, as ``kedro run --params`` would."""
        by_time = self.budget_steps is None
        params = {
            "dataset": dataset,
            "model": {"encoder": "resnet18", "stem": "cifar", "width": self.width, "h_dim": None,
                      "latent_dim": self.latent_dim},
            "pretrain": {
                "objective": objective,
                "kl_coeff": default_kl_coeff(objective),  # stated, so MLflow shows it
                "log_scale": 0.0,
                "learn_scale": False,
                "val_samples": 1,  # a diagnostic only; 16 samples would eat into the budget
                "max_epochs": 100_000,  # never reached: the budget stops training
                "max_time_minutes": self.budget_minutes if by_time else None,
                "max_steps": None if by_time else self.budget_steps,
                "schedule_to_time_limit": by_time and self.schedule != "constant",
                "batch_size": self.batch_size,
                "optimizer": "adam",
                "learning_rate": self.learning_rate,
                "weight_decay": default_weight_decay(objective),  # stated, so MLflow shows it
                "warmup_epochs": 0,
                "warmup_fraction": self.warmup_fraction,
                "schedule": self.schedule,
                "seed": seed,
                "resume": False,
                "checkpoint_every_n_epochs": self.snapshot_every,
                "reconstruction_every_n_epochs": self.snapshot_every,
            },
            "evaluate": {"protocol": "frozen_features", "baselines": baselines, "seed": seed},
        }
        for group, key, value in self.overrides:
            params.setdefault(group, {})[key] = value
        return params


def default_kl_coeff(objective: str) -> float:
    """The project's KL weight for the objective: 0.1 for vae (the paper's), 0 otherwise.

    Stated explicitly because the ``cifar10`` environment pins ``kl_coeff: 0.0`` (its recipe
    is AAVAE's), which would turn the VAE into an AE with noise.
    """
    from aavae.config import PretrainConfig  # the project's src/ is on the path by now

    return PretrainConfig(objective=objective).effective_kl_coeff


def default_weight_decay(objective: str) -> float:
    """The project's weight decay for the objective: the paper's ae.py default 1e-6 for ``ae``."""
    from aavae.config import PretrainConfig

    return PretrainConfig(objective=objective).effective_weight_decay


@dataclass
class Outcome:
    """One run (an objective or a baseline at one seed)."""

    name: str
    epochs: float | None
    images_seen: int | None
    linear_top1: float
    knn_top1: float
    pretrain_seconds: float | None = None
    evaluate_seconds: float | None = None
    kl_coeff: float | None = None
    seed: int = 0


# -- arguments ------------------------------------------------------------------------------
def _names(text: str, allowed: tuple[str, ...], flag: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [] if text.strip().lower() == "none" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or len(set(names)) != len(names):
        parser.error(f"{flag} {text!r}: expected distinct names from {', '.join(allowed)}, "
                     "comma-separated")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_DATA,
                        help="CIFAR-10: the official python archive/folder, or an image-folder tree or "
                             ".tar/.tar.gz/.zip of <split>/<class>/<image> (default: %(default)s)")
    parser.add_argument("--format", choices=("auto", "cifar10", "imagefolder"), default="auto",
                        help="how to read --path (auto: cifar10 for cifar-10-python.tar.gz or "
                             "cifar-10-batches-py, imagefolder otherwise)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES),
                        help="comma-separated, run in this order")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="evaluated once, with the first objective ('none' for none)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, default=None,
                        help="training wall time per run, the schedule fitted to it (default 5)")
    budget.add_argument("--budget-steps", type=int, default=None,
                        help="optimisation steps per run instead: equal steps, not equal time")
    parser.add_argument("--seeds", type=int, default=3, help="runs per objective, seeds 0..N-1")
    parser.add_argument("--width", type=int, default=32, help="ResNet-18 base channels (the paper's: 64)")
    parser.add_argument("--latent-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam peak learning rate")
    parser.add_argument("--warmup-fraction", type=float, default=0.05,
                        help="linear warm-up, as a share of the run's steps")
    parser.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine",
                        help="decay after the warm-up, ending with the budget (constant: none)")
    parser.add_argument("--snapshot-every", type=int, default=2,
                        help="epochs between checkpoints and reconstruction grids in MLflow")
    parser.add_argument("--subset", type=int, default=None,
                        help="use N images of each split (stratified by class), for a smoke test")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.KEY=VALUE",
                        help="change one more parameter for every objective, e.g. "
                             "--set views.crop_scale=[0.2,1.0] (value read as YAML; repeatable)")
    parser.add_argument("--eval-variant", dest="eval_variants", action="append", default=[],
                        metavar="evaluate.KEY=VALUE",
                        help="also evaluate every trained model with this evaluate parameter changed "
                             "(one more row per objective), e.g. evaluate.recompute_bn_stats=true")
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR,
                        help="where results and kept artifacts go, relative to the project (default %(default)s)")
    parser.add_argument("--experiment", default="budget_cifar10", help="MLflow experiment of all runs")
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT, help="Kedro project root to run in")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    args.overrides = tuple(_override(text, parser) for text in args.overrides)
    args.eval_variants = tuple(_override(text, parser) for text in args.eval_variants)
    if any(group != "evaluate" for group, _, _ in args.eval_variants):
        parser.error("--eval-variant changes an evaluate parameter only, e.g. evaluate.recompute_bn_stats=true")
    args.objectives = _names(args.objectives, OBJECTIVES, "--objectives", parser)
    args.baselines = _names(args.baselines, BASELINES, "--baselines", parser)
    if not args.objectives:
        parser.error("--objectives: give at least one of " + ", ".join(OBJECTIVES))
    if args.budget_minutes is None and args.budget_steps is None:
        args.budget_minutes = 5.0
    for flag, value in (("--budget-minutes", args.budget_minutes), ("--budget-steps", args.budget_steps),
                        ("--seeds", args.seeds), ("--width", args.width),
                        ("--latent-dim", args.latent_dim), ("--batch-size", args.batch_size),
                        ("--lr", args.lr), ("--snapshot-every", args.snapshot_every),
                        ("--subset", args.subset), ("--threads", args.threads)):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be positive, got {value}")
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if not args.path.exists():
        parser.error(f"--path {args.path}: no such file or folder. Give a CIFAR-10 copy (the official "
                     "python archive, or an image-folder tree/archive such as cifar10_jpeg.tar.gz).")
    if not (args.project / "pyproject.toml").is_file() or not (args.project / "conf" / "base").is_dir():
        parser.error(f"--project {args.project}: not a Kedro project root "
                     "(needs pyproject.toml and conf/base)")
    args.path, args.project = args.path.resolve(), args.project.resolve()
    return args


def _override(text: str, parser: argparse.ArgumentParser) -> tuple[str, str, Any]:
    """``GROUP.KEY=VALUE`` -> (group, key, value), checked against the project's schema now so a
    typo fails before an hour of runs, not after the first objective."""
    from aavae.config import SCHEMAS, ConfigError, parse

    dotted, separator, raw = text.partition("=")
    group, _, key = dotted.strip().partition(".")
    allowed = [name for name in SCHEMAS if name != "dataset"]  # --path/--format own the dataset
    if not separator or group not in allowed or not key or "." in key:
        parser.error(f"--set {text!r}: expected GROUP.KEY=VALUE with GROUP one of {', '.join(allowed)}, "
                     "e.g. --set views.crop_scale=[0.2,1.0]")
    # read as Kedro reads --params (OmegaConf's YAML: 1e-3 is a number, not YAML 1.1's string)
    value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"] if raw.strip() else None
    try:
        parse(group, {key: value})
    except ConfigError as error:
        parser.error(f"--set {text!r}: {error}")
    return group, key, value


# -- data -----------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    names = {path.name} | ({child.name for child in path.iterdir()} if path.is_dir() else set())
    return "cifar10" if names & CIFAR10_PYTHON_NAMES else "imagefolder"


def dataset_params(path: Path, data_format: str) -> tuple[str, dict[str, Any]]:
    """The Kedro environment and ``dataset`` parameters that read ``path``."""
    if data_format == "cifar10":
        return "cifar10", {"name": "cifar10", "path": str(path), "download": False}
    return "imagefolder", {"name": "imagefolder", "path": str(path), "image_size": 32}


def stratified_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices that take classes in turn (in a seeded order), sorted."""
    order = np.random.default_rng(seed).permutation(len(labels))
    rank_in_class = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = order[labels[order] == label]
        rank_in_class[members] = np.arange(len(members))
    by_turn = order[np.argsort(rank_in_class[order], kind="stable")]
    return np.sort(by_turn[:count])


def write_subset(path: Path, data_format: str, count: int, destination: Path) -> Path:
    """Write ``count`` images of each split as a PNG image-folder tree; return its path."""
    # The project's readers, imported once the project's src/ is on the path.
    from aavae.config import DatasetConfig
    from aavae.data import pipeline_splits, read_dataset

    _, params = dataset_params(path, data_format)
    train, test, _ = pipeline_splits(read_dataset(DatasetConfig(**params)))
    if destination.exists():
        shutil.rmtree(destination)
    for split_name, imageset in (("train", train), ("test", test)):
        for index in stratified_indices(np.asarray(imageset.labels), count, seed=0):
            folder = destination / split_name / imageset.class_names[imageset.labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(imageset.images[index])).save(folder / f"{index:06d}.png")
    return destination


# -- Kedro and MLflow -----------------------------------------------------------------------
def write_conf(project: Path, env: str, experiment: str, run_name: str, destination: Path) -> Path:
    """A conf source: the project's ``base`` and ``env``, with the MLflow experiment and run
    named (kedro-mlflow reads them only from ``mlflow.yml``)."""
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(project / "conf" / "base", destination / "base")
    shutil.copytree(project / "conf" / env, destination / env)
    mlflow_yml = destination / "base" / "mlflow.yml"
    settings = yaml.safe_load(mlflow_yml.read_text())
    settings["tracking"]["experiment"]["name"] = experiment
    settings["tracking"]["run"]["name"] = run_name
    mlflow_yml.write_text(yaml.safe_dump(settings, sort_keys=False))
    return destination


def run_pipeline(
    project: Path, conf_source: Path, env: str, params: dict[str, Any], pipeline: str
) -> float:
    """Run one registered pipeline in a fresh Kedro session (one MLflow run); return seconds."""
    import mlflow
    from kedro.framework.session import KedroSession

    started = time.perf_counter()
    with KedroSession.create(project_path=project, env=env, runtime_params=params,
                             conf_source=str(conf_source)) as session:
        session.run(pipeline_names=[pipeline])
    # kedro-mlflow re-opens the run before each node (nested=True), which with mlflow 3 stacks
    # the same run again on this thread's active-run stack, and ends it once at the end: the
    # run (already FINISHED in the store) stays active here and the next session would log
    # into it. A `kedro run` process exits instead; in one process, clear the stack.
    while mlflow.active_run() is not None:
        mlflow.end_run()
    return time.perf_counter() - started


def train_size(card: dict[str, Any]) -> int:
    splits = card["splits"]
    return sum(splits[name]["count"] for name in ("train", "unlabeled") if name in splits)


# -- one run --------------------------------------------------------------------------------
def run_objective(
    objective: str, params: dict[str, Any], args: argparse.Namespace, env: str, seed: int = 0,
    pipelines: tuple[str, ...] = ("pretrain", "evaluate"), label: str | None = None,
) -> dict[str, float]:
    """Run the pretrain then the evaluate pipeline for one objective and seed; their seconds."""
    conf = args.project / args.report_dir / "conf"
    seconds = {}
    for pipeline in pipelines:
        name = label or objective
        write_conf(args.project, env, args.experiment, f"{name}/seed{seed}/{pipeline}", conf)
        print(f"[budget] {name} seed {seed}: {pipeline} ...", flush=True)
        try:
            seconds[pipeline] = run_pipeline(args.project, conf, env, params, pipeline)
        except Exception as error:
            raise RuntimeError(
                f"objective '{objective}' seed {seed}: the {pipeline} pipeline failed ({error}); its "
                "MLflow run is marked FAILED and the log above says why"
            ) from error
    return seconds


def measure(
    objective: str, batch_size: int, seconds: dict[str, float], artifacts: Path, seed: int = 0
) -> tuple[Outcome, dict[str, Any]]:
    """The row of the run just made, from what its pipelines wrote under ``artifacts`` (the
    environment's root); and its metrics.json."""
    metrics = json.loads((artifacts / METRICS).read_text())
    card = json.loads((artifacts / DATASET_CARD).read_text())
    bundle = torch.load(artifacts / KEPT_ARTIFACTS[0], map_location="cpu", weights_only=True)
    from aavae.common.batches import batch_shape

    steps_per_epoch, per_step = batch_shape(train_size(card), batch_size)  # the training loader's
    # The optimisation steps the run made (a budget usually ends mid-epoch); whole epochs
    # for a bundle from before the engine recorded them.
    steps = int(bundle.get("steps", int(bundle["epochs"]) * steps_per_epoch))
    outcome = Outcome(objective, steps / steps_per_epoch, steps * per_step, metrics["linear_top1"],
                      metrics["knn_top1"], seconds["pretrain"], seconds["evaluate"], bundle.get("kl_coeff"),
                      seed)
    return outcome, metrics


def keep_artifacts(project: Path, artifacts: Path, objective: str, seed: int = 0, report_dir: Path = REPORT_DIR) -> Path:
    """Copy the run's model, metrics and figures (under ``artifacts``) before the next run
    overwrites them."""
    kept = project / report_dir / objective / f"seed{seed}"
    kept.mkdir(parents=True, exist_ok=True)
    for artifact in KEPT_ARTIFACTS:
        if (artifacts / artifact).is_file():
            shutil.copy2(artifacts / artifact, kept / artifact.name)
    return kept


def progress_line(row: Outcome, kept: Path) -> str:
    return (f"[budget] {row.name} seed {row.seed}: {row.epochs:.2f} epochs ({row.images_seen:,} "
            f"images, kl_coeff {row.kl_coeff}) in a {row.pretrain_seconds:.0f} s pretrain run, evaluated "
            f"in {row.evaluate_seconds:.0f} s: linear {100 * row.linear_top1:.2f}%, kNN "
            f"{100 * row.knn_top1:.2f}%; artifacts in {kept}")


# -- report ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def budget_line(args: argparse.Namespace) -> str:
    if args.budget_steps is not None:
        fairness = f"equal steps: {args.budget_steps} optimisation steps per run"
    else:
        fitted = "" if args.schedule == "constant" else ", the schedule fitted to it"
        fairness = f"equal wall clock: {args.budget_minutes:g} min of pretraining per run{fitted}"
    return (f"budget: {fairness}; {args.seeds} seed(s) per objective; objectives "
            f"{', '.join(args.objectives)}")


def header_lines(args: argparse.Namespace, env: str) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"cpu: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), torch threads "
        f"{torch.get_num_threads()}; gpu: {gpu}; torch {torch.__version__}",
        budget_line(args),
        f"recipe: ResNet-18 (cifar stem) width {args.width}, latent {args.latent_dim}, batch "
        f"{args.batch_size}, Adam peak lr {args.lr:g}, warm-up {args.warmup_fraction:g} of the run, "
        f"then {args.schedule}"
        + "".join(f"; {group}.{key}={value!r}" for group, key, value in args.overrides),
        f"data: {args.path} (env {env}{f', subset {args.subset} per split' if args.subset else ''}); "
        f"MLflow experiment '{args.experiment}'",
        f"command: {shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}",
    ]


def _cell(value: float | int | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _spread(values: list[float]) -> str:
    """Mean +- sample standard deviation, in percent (just the value for one run)."""
    percents = [100 * v for v in values]
    if len(percents) == 1:
        return f"{percents[0]:.2f}"
    return f"{statistics.mean(percents):.2f} ± {statistics.stdev(percents):.2f}"


def results_table(rows: list[Outcome]) -> list[str]:
    """One line per objective or baseline, its runs aggregated over seeds."""
    lines = ["| objective | runs | epochs reached | images seen | linear top-1 | kNN top-1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(row.name for row in rows):
        runs = [row for row in rows if row.name == name]
        epochs = [row.epochs for row in runs if row.epochs is not None]
        seen = [row.images_seen for row in runs if row.images_seen is not None]
        lines.append(
            f"| {name} | {len(runs)} | {_cell(statistics.mean(epochs) if epochs else None, '.2f')} | "
            f"{_cell(round(statistics.mean(seen)) if seen else None, ',')} | "
            f"{_spread([row.linear_top1 for row in runs])} | {_spread([row.knn_top1 for row in runs])} |"
        )
    return lines


def baseline_rows(metrics: dict[str, Any], names: list[str], seed: int = 0) -> list[Outcome]:
    rows = []
    for name in names:
        scores = metrics["baselines"][name]
        untrained = name == "random_init"
        rows.append(Outcome(BASELINE_LABELS[name], 0.0 if untrained else None, 0 if untrained else None,
                            scores["linear_top1"], scores["knn_top1"], seed=seed))
    return rows


def baselines_for(seed: int, wanted: list[str]) -> list[str]:
    """Random init is drawn anew for every seed; raw pixels is deterministic: seed 0 only."""
    return [name for name in wanted if seed == 0 or name != "raw_pixels"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    # The catalog, checkpoints and MLflow store use paths relative to the project root, and
    # Kedro finds conf/logging.yml there when it is first imported: move there first.
    os.chdir(args.project)
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(args.project)

    data_format = detect_format(args.path) if args.format == "auto" else args.format
    header = header_lines(args, dataset_params(args.path, data_format)[0])
    print("\n".join(header), flush=True)
    if args.subset:
        started = time.perf_counter()
        args.path = write_subset(args.path, data_format, args.subset, args.project / SUBSET_DIR)
        data_format = "imagefolder"
        print(f"[budget] subset: {args.subset} images per split written to {args.path} "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
    env, dataset = dataset_params(args.path, data_format)
    artifacts = artifact_root(args.project, env)
    recipe = Recipe(args.budget_minutes, args.budget_steps, args.width, args.latent_dim,
                    args.batch_size, args.lr, args.warmup_fraction, args.schedule,
                    args.snapshot_every, args.overrides)

    runs, baselines = [], []
    for seed in range(args.seeds):
        for position, objective in enumerate(args.objectives):
            wanted = baselines_for(seed, args.baselines) if position == 0 else []
            params = recipe.runtime_params(objective, dataset, wanted, seed)
            seconds = run_objective(objective, params, args, env, seed)
            row, metrics = measure(objective, args.batch_size, seconds, artifacts, seed)
            print(progress_line(row, keep_artifacts(args.project, artifacts, objective, seed, args.report_dir)),
                  flush=True)
            runs.append(row)
            baselines += baseline_rows(metrics, wanted, seed)
            for group, key, value in args.eval_variants:  # the same model, evaluated otherwise
                label = f"{objective}, {group}.{key}={value}"
                varied = {**params, group: {**params[group], key: value, "baselines": []}}
                seconds = {"pretrain": row.pretrain_seconds,
                           **run_objective(objective, varied, args, env, seed, ("evaluate",), label)}
                variant, _ = measure(objective, args.batch_size, seconds, artifacts, seed)
                variant.name = label
                print(progress_line(variant, keep_artifacts(args.project, artifacts, label.replace("/", "_"), seed,
                                                            args.report_dir)), flush=True)
                runs.append(variant)
    rows = runs + sorted(baselines, key=lambda row: row.name != BASELINE_LABELS["random_init"])

    table = results_table(rows)
    report = args.project / args.report_dir
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.md").write_text("\n".join([*header, "", *table]) + "\n")
    (report / "results.json").write_text(json.dumps(
        {"header": header, "recipe": asdict(recipe), "runs": [asdict(row) for row in rows]}, indent=2))
    print("\n".join(["", *table]), flush=True)

if __name__ == "__main__":
    main()
