"""The budget benchmark drives the real pretrain and evaluate pipelines for each objective.

A tiny image-folder tree (two colour classes) and a budget of about a second per objective,
in a throw-away copy of the project; the results are checked in the printed table, the
copied artifacts and the MLflow store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import PROJECT_ROOT, copy_project

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

SCRIPT = PROJECT_ROOT / "benchmarks" / "budget_cifar10.py"
SPREAD = r"(\d+\.\d\d(?: ± \d+\.\d\d)?)"  # mean ± sd over seeds, or one run's value
ROW = re.compile(  # name | runs | epochs reached | images seen | linear top-1 | kNN top-1
    rf"^\| (vae|ae|random init|raw pixels) \| (\d) \| (-|\d+\.\d\d) \| (-|[\d,]+) \| {SPREAD} \| {SPREAD} \|$"
)


def write_image_tree(root: Path, per_class: int = 8) -> Path:
    """train/ and test/ of 32 x 32 PNGs: noise tinted red or blue by class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for channel, name in ((0, "red"), (2, "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(folder / f"{index:02d}.png")
    return root


def test_each_objective_is_pretrained_and_evaluated_into_one_experiment(tmp_path):
    (tmp_path / "project").mkdir()
    project = copy_project(tmp_path / "project")
    tree = write_image_tree(tmp_path / "images")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--path", str(tree), "--project", str(project),
         "--objectives", "vae,ae", "--budget-minutes", "0.02", "--seeds", "2", "--width", "4", "--latent-dim", "8",
         "--batch-size", "8", "--threads", "1", "--experiment", "budget_test",
         "--set", "views.crop_scale=[0.5, 1.0]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    lines = result.stdout.strip().splitlines()
    assert lines[-6:-4] == ["| objective | runs | epochs reached | images seen | linear top-1 | kNN top-1 |",
                            "|---|---:|---:|---:|---:|---:|"]
    rows = [ROW.match(line) for line in lines[-4:]]
    assert all(rows), lines[-4:]
    assert [(row.group(1), row.group(2)) for row in rows] == [
        ("vae", "2"), ("ae", "2"), ("random init", "2"), ("raw pixels", "1")], "random init drawn per seed"
    assert " ± " in rows[0].group(5) and " ± " not in rows[3].group(5)
    for row in rows[:2]:  # trained: at least one step (the means over two seeds)
        assert float(row.group(3)) > 0 and int(row.group(4).replace(",", "")) >= 8
    assert any(line.startswith("command: ") and "--objectives vae,ae" in line for line in lines)
    assert any(line.startswith("budget: equal wall clock: 0.02 min") for line in lines)

    kept = project / "data/08_reporting/budget_cifar10"
    vae, ae, vae1 = (json.loads((kept / name / "metrics.json").read_text())
                     for name in ("vae/seed0", "ae/seed0", "vae/seed1"))
    assert (vae["objective"], ae["objective"]) == ("vae", "ae")
    assert set(vae["baselines"]) == {"random_init", "raw_pixels"} and ae["baselines"] == {}, \
        "baselines are scored with the first objective of a seed"
    assert set(vae1["baselines"]) == {"random_init"}, "raw pixels once: it is deterministic"
    assert (kept / "ae/seed1/aavae_model.pt").is_file() and (kept / "results.md").is_file()
    every_run = json.loads((kept / "results.json").read_text())["runs"]
    assert sorted((run["name"], run["seed"]) for run in every_run if run["name"] in ("vae", "ae")) == [
        ("ae", 0), ("ae", 1), ("vae", 0), ("vae", 1)]

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("budget_test")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"{o}/seed{s}/{p}" for o in ("vae", "ae") for s in (0, 1) for p in ("pretrain", "evaluate")}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    assert runs["vae/seed0/pretrain"].data.params["pretrain.kl_coeff"] == "0.1"
    assert runs["ae/seed0/pretrain"].data.params["pretrain.kl_coeff"] == "0.0"
    assert runs["ae/seed1/pretrain"].data.params["pretrain.weight_decay"] == "1e-06", "the paper's AE"
    assert runs["vae/seed1/pretrain"].data.params["pretrain.seed"] == "1"
    assert runs["vae/seed1/pretrain"].data.tags["seed"] == "1"
    for objective in ("vae", "ae"):  # --set reaches every objective's run
        assert runs[f"{objective}/seed0/pretrain"].data.params["views.crop_scale"] == "[0.5, 1.0]"
    for name, run in runs.items():  # each evaluation points at its own training run
        if name.endswith("/evaluate"):
            training_run = runs[name.replace("/evaluate", "/pretrain")].info.run_id
            assert run.data.tags["training_run_id"] == training_run


def test_a_bad_set_override_stops_before_any_run(tmp_path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    for override, expected in (("views.crop_scal=[0.2,1.0]", "unknown parameter"),
                               ("pretrain.learning_rate=fast", "learning_rate"),
                               ("dataset.path=/x", "GROUP one of"),
                               ("views.crop_scale", "GROUP.KEY=VALUE")):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--path", str(tmp_path), "--set", override],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2 and expected in result.stderr, (override, result.stderr[-2000:])
        assert "[budget]" not in result.stdout
