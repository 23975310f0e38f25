"""`kedro run --pipeline embed` and `embed_query` on real image files, in a copy of a trained project."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from aavae.data.imageset import load_imageset
from tests.conftest import kedro

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # other batch sizes than the features pipeline's
IMAGES = 30


@pytest.fixture(scope="module")
def embed_project(digits_project, tmp_path_factory):
    """A copy of the trained project (its MLflow runs stay those of pretrain and evaluate)."""
    project = tmp_path_factory.mktemp("embed") / "project"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("mlruns"))
    return project


@pytest.fixture(scope="module")
def photo_folder(embed_project, tmp_path_factory):
    """Test digits as PNG files (lossless) in a layout with no classes, and what they are."""
    images = np.asarray(load_imageset(embed_project / "data/test/03_primary/images_test").images)
    with np.load(embed_project / "data/test/04_feature/features_test.npz") as archive:
        features = archive["features"]
    folder = tmp_path_factory.mktemp("photos") / "scans"
    rows = {}
    for row in range(IMAGES):
        name = f"batch{row % 3}/page {row:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[row]).save(folder / name)
        rows[name] = row
    (folder / "index.txt").write_text("not an image")
    return folder, rows, features


def embeddings(project) -> pd.DataFrame:
    return pd.read_parquet(project / "data/test/07_model_output/embeddings.parquet")


def test_embed_writes_a_parquet_table_with_the_features_pipelines_features(embed_project, photo_folder):
    folder, rows, features = photo_folder
    # 32-true: the features pipeline's exact call (auto may pick the faster bf16 path)
    kedro(embed_project, "--pipeline", "embed", "--env", "test", "--params",
          f"embed.path={folder},embed.precision=32-true")

    table = embeddings(embed_project)
    assert list(table.columns) == ["path", "embedding"] and sorted(table.path) == sorted(rows)
    vectors = np.stack(table.embedding.to_numpy())
    np.testing.assert_allclose(vectors, features[[rows[p] for p in table.path]], **TOLERANCE)

    report = json.loads((embed_project / "data/test/08_reporting/neighbours.json").read_text())
    assert report["source"] == str(folder) and len(report["queries"]) == 4
    for query in report["queries"]:
        found = [n["path"] for n in query["neighbours"]]
        assert len(found) == 8 and query["query"] not in found, "a folder image is not its own neighbour"
        assert found[0] in rows
    # The scores separate: the 32 similarities of the 4 sample queries' 8 neighbours span over 0.3
    # (the plain cosine of a trained model's features put them all at 0.98-0.99; here, 0.79-0.98).
    similarities = [n["similarity"] for query in report["queries"] for n in query["neighbours"]]
    assert max(similarities) - min(similarities) > 0.3, similarities
    assert (embed_project / "data/test/08_reporting/neighbours.png").read_bytes().startswith(b"\x89PNG")

    client = MlflowClient(f"sqlite:///{embed_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    run = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'embed %'")[0]
    assert {"neighbours.json", "neighbours.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_query_image_lists_its_nearest_images_from_the_stored_index(embed_project, photo_folder):
    folder, rows, features = photo_folder
    query = folder / "batch1/page 001.png"
    result = kedro(embed_project, "--pipeline", "embed_query", "--env", "test", "--params",
                   f"embed.query={query},embed.precision=32-true")

    report = json.loads((embed_project / "data/test/08_reporting/neighbours.json").read_text())
    (answer,) = report["queries"]
    assert answer["query"] == str(query)
    assert answer["neighbours"][0]["path"] == "batch1/page 001.png"  # the file itself is in the folder
    assert answer["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    centred = features[:IMAGES] - features[:IMAGES].mean(axis=0)  # the index centres the folder's features
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ unit[rows["batch1/page 001.png"]]))[:8]
    by_row = {row: name for name, row in rows.items()}
    assert [n["path"] for n in answer["neighbours"]] == [by_row[r] for r in expected]
    assert "Nearest to" in result.stdout + result.stderr


def test_a_registered_model_embeds_an_archive_like_the_trained_bundle(embed_project, photo_folder, tmp_path):
    folder, rows, features = photo_folder
    archive = tmp_path / "scans.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(folder, arcname="scans")
    kedro(embed_project, "--pipeline", "embed", "--env", "test", "--params",
          f"embed.path={archive},embed.model_uri=models:/digits-aavae-encoder/1")

    table = embeddings(embed_project)
    assert sorted(table.path) == sorted(f"scans/{name}" for name in rows)
    vectors = np.stack(table.embedding.to_numpy())
    np.testing.assert_allclose(vectors, features[[rows[p.removeprefix("scans/")] for p in table.path]],
                               **TOLERANCE)
    index = np.load(embed_project / "data/test/07_model_output/embedding_index.npz", allow_pickle=False)
    assert str(index["model"]) == "models:/digits-aavae-encoder/1"


def test_embed_without_a_path_says_what_to_give(embed_project):
    result = kedro(embed_project, "--pipeline", "embed", "--env", "test", check=False, timeout=300)
    assert result.returncode != 0
    assert "embed.path is not set" in result.stdout + result.stderr
