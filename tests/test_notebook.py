"""The tour notebook runs top to bottom against a project where the pipelines have run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts processes or real kedro runs

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "aavae_tour.ipynb"


def outputs(notebook, kind: str) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
            if o.output_type == kind]


def test_tour_notebook_runs_without_errors(digits_project, tmp_path, monkeypatch):
    monkeypatch.setenv("AAVAE_PROJECT", str(digits_project))
    monkeypatch.setenv("AAVAE_ENV", "test")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells), "commit the notebook without outputs"

    # Run from a folder that is no Kedro project: the notebook must find its project itself.
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    assert outputs(notebook, "error") == []
    assert not (tmp_path / "mlflow.db").exists(), "the project's store, not one in the notebook's folder"
    printed = "".join(o.text for o in outputs(notebook, "stream") if o.name == "stdout")
    assert f"project: {digits_project}" in printed
    assert "precision@5" in printed
    images = [o for o in outputs(notebook, "display_data") if "image/png" in o.data]
    # view preview, reconstructions, embedding, retrieval grid
    assert len(images) == 4
