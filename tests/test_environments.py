"""Each Kedro environment keeps its own artifacts (conf/<env>/globals.yml's ``root``): two run
from one clone never overwrite each other, and an evaluate whose ingested images are not the
environment's dataset, or that has none, is refused, naming both."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from aavae.common.liveness import temporary_prefix
from tests.conftest import PROJECT_ROOT, copy_project, kedro
from tests.helpers.datasets import two_class_folder

CONF = PROJECT_ROOT / "conf"
ENVIRONMENTS = sorted(path.name for path in CONF.iterdir() if path.is_dir() and path.name not in ("base", "local"))
#: An imagefolder run of seconds: the smallest network and one epoch.
SMALL = ("model.width=4,model.latent_dim=8,pretrain.max_epochs=1,pretrain.batch_size=8,pretrain.warmup_epochs=0,"
         "pretrain.compile=false,views.val_count=4,views.preview_count=2,views.preview_views=1")


def artifact_root(env: str) -> str:
    """The root `kedro run --env <env>` writes under, as the project's config loader reads it."""
    loader = OmegaConfigLoader(str(CONF), base_env="base", default_run_env=env)
    return loader["globals"]["root"]


def test_base_writes_where_readme_says_and_every_other_environment_in_a_folder_of_its_own():
    assert artifact_root("base") == artifact_root("local") == "data"
    assert {env: artifact_root(env) for env in ENVIRONMENTS} == {env: f"data/{env}" for env in ENVIRONMENTS}


def _fingerprints(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def _said(result) -> str:
    return " ".join((result.stdout + result.stderr).split())  # the log wraps long lines


@pytest.mark.slow
def test_two_environments_run_from_one_clone_and_neither_overwrites_the_other(tmp_path):
    project = copy_project(tmp_path)
    folder = two_class_folder(tmp_path / "images")
    kedro(project, "--pipeline", "pretrain", "--env", "test")
    digits = _fingerprints(project / "data/test")
    assert "06_models/aavae_model.pt" in digits and any(name.endswith("last.ckpt") for name in digits)

    kedro(project, "--pipeline", "pretrain", "--env", "imagefolder", "--params", f"dataset.path={folder},{SMALL}")

    assert _fingerprints(project / "data/test") == digits, "the other environment's run touched none of them"
    card = json.loads((project / "data/imagefolder/03_primary/dataset_card.json").read_text())
    assert card["name"] == "imagefolder" and (project / "data/imagefolder/06_models/aavae_model.pt").is_file()
    assert list((project / "data/imagefolder/06_models/checkpoints").glob("*/last.ckpt"))
    assert not [path for path in (project / "data").glob("0*/**/*") if path.is_file()], "nothing in base's data/"

    # a writer killed in one environment's folder leaves a temporary the next run of any removes
    (run_folder,) = (project / "data/imagefolder/06_models/checkpoints").glob("*/")
    killed = run_folder / temporary_prefix("last.ckpt").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    killed.write_bytes(b"half a file")
    kedro(project, "--pipeline", "evaluate", "--env", "test", "--params",
          "evaluate.embedding_points=50,evaluate.baselines=[]")
    metrics = json.loads((project / "data/test/08_reporting/metrics.json").read_text())
    assert (metrics["dataset"], metrics["evaluation"]) == ("digits", "same_data"), "its own model, on its own images"
    assert not (project / "data/imagefolder/08_reporting/metrics.json").exists()
    assert not killed.exists()

    # an environment whose dataset was never ingested has nothing to evaluate
    result = kedro(project, "--pipeline", "evaluate", "--env", "cifar10_short", check=False)
    assert result.returncode != 0 and "data/cifar10_short/03_primary/images_train" in _said(result)
    assert "does not exist yet: run `kedro run --pipeline pretrain --env cifar10_short` first" in _said(result)

    # ... and one whose folder holds another dataset's images is refused, naming both
    kedro(project, "--pipeline", "ingest", "--env", "cifar10_short", "--params", "dataset.name=digits,dataset.image_size=32")
    result = kedro(project, "--pipeline", "evaluate", "--env", "cifar10_short", check=False)
    said = _said(result)
    assert result.returncode != 0
    assert "The images ingested in data/cifar10_short/03_primary are digits from sklearn.datasets.load_digits" in said
    assert "this environment's dataset is dataset.name=imagefolder" in said
    # an image folder is known by its path too: another folder given at evaluate is not the one ingested
    other = two_class_folder(tmp_path / "other", side=12)
    result = kedro(project, "--pipeline", "evaluate", "--env", "imagefolder", "--params", f"dataset.path={other}",
                   check=False)
    assert result.returncode != 0 and f"this environment's dataset is dataset.path={other}" in _said(result)


@pytest.mark.parametrize(("name", "path", "refused"), [
    ("imagefolder", None, False),                 # the environment names no path: the name decides
    ("imagefolder", "images.tar.gz", False),      # the folder ingested
    ("imagefolder", "copy.tar.gz", False),        # the same archive elsewhere, by its sha256
    ("imagefolder", "missing.tar.gz", False),     # not here: nothing to compare
    ("imagefolder", "other.tar.gz", True),        # another archive
    ("imagefolder", ".", True),                   # another folder
    ("digits", None, True),                       # another dataset
])
def test_ingested_images_are_the_environments_dataset_by_name_path_or_archive(name, path, refused, tmp_path,
                                                                              monkeypatch):
    from aavae.common.provenance import ProvenanceError
    from aavae.data.card import check_ingested
    from tests.helpers.datasets import tar_folder

    monkeypatch.chdir(tmp_path)
    archive = tar_folder(two_class_folder(tmp_path / "tree"), tmp_path / "images.tar.gz")
    (tmp_path / "copy.tar.gz").write_bytes(archive.read_bytes())
    (tmp_path / "other.tar.gz").write_bytes(archive.read_bytes() + b"\0")
    card = {"name": "imagefolder", "source": "images.tar.gz", "sha256": "c" * 64,
            "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}
    if not refused:
        check_ingested(card, name, path, "data/env/03_primary")
        return
    with pytest.raises(ProvenanceError, match=r"The images ingested in data/env/03_primary are imagefolder from "
                                              r"images.tar.gz .* but this environment's dataset is dataset\.(name|path)="):
        check_ingested(card, name, path, "data/env/03_primary")
