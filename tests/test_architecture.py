"""The import rules of docs/architecture.md, read from the source (no module is imported).

Every ``import aavae...`` / ``from aavae... import`` in ``src/aavae`` counts, at module level or
inside a function (a lazy import is still a dependency). A module may import its own layer and
the layers below it, never one above; packages form no circle; the layers under the Kedro
glue import neither Kedro nor MLflow, so they work from a notebook or another program.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "aavae"

#: Lowest first. The unit of a layer is the first part of the module's name under ``aavae``.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"common", "reporting"})),
    ("core", frozenset({"objective", "models", "data", "views", "config"})),
    ("engines", frozenset({"training", "evaluation", "serving", "tracking"})),
    ("kedro glue", frozenset({"kedro_ext", "pipelines"})),
    ("shell", frozenset({"settings", "pipeline_registry", "cli", "__main__", "__init__",
                         # compatibility aliases of old import paths (catalogs, registered models)
                         "datasets", "mlflow_model"})),
)
LAYER_OF = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
#: Layers below the Kedro glue are plain PyTorch/NumPy: usable without Kedro or MLflow,
#: except the engines that exist to talk to MLflow.
NO_KEDRO_BELOW = LAYER_OF["kedro_ext"]
MLFLOW_ALLOWED = {"tracking", "serving"}
#: At most this many modules at the top of the package: the shell and the core vocabulary
#: (config, objective, views), plus the two compatibility aliases.
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "settings", "pipeline_registry", "config",
                     "objective", "datasets", "mlflow_model"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module name this file imports (``aavae.x.y`` and third-party roots)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "aavae":  # from aavae import tracking
                names.update(f"aavae.{alias.name}" for alias in node.names)
    return names


def unit(module: str) -> str:
    return module.split(".")[0]


def project_edges() -> list[tuple[str, str]]:
    """(importing module, imported module), both relative to ``aavae``."""
    edges = []
    for name, path in modules().items():
        for imported in imports_of(path):
            if imported.startswith("aavae."):  # a bare `import aavae` reads only its __file__
                edges.append((name, imported.removeprefix("aavae.")))
    return edges


def test_every_unit_has_a_layer():
    units = {unit(name) for name in modules()}
    assert units - set(LAYER_OF) == set(), "add the new package or module to LAYERS (and docs/architecture.md)"


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{importer} ({LAYERS[LAYER_OF[unit(importer)]][0]}) imports {imported} "
              f"({LAYERS[LAYER_OF[unit(imported)]][0]})"
              for importer, imported in project_edges()
              if LAYER_OF[unit(imported)] > LAYER_OF[unit(importer)]]
    assert upward == []


def test_packages_form_no_circle():
    graph: dict[str, set[str]] = {}
    for importer, imported in project_edges():
        if unit(importer) != unit(imported):
            graph.setdefault(unit(importer), set()).add(unit(imported))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted(a for a in graph if reaches(a, a, {a}))
    assert circles == []


@pytest.mark.parametrize("library", ["kedro", "kedro_mlflow", "mlflow"])
def test_the_layers_under_the_kedro_glue_import_no_kedro_and_only_engines_import_mlflow(library):
    offenders = []
    for name, path in modules().items():
        if LAYER_OF[unit(name)] >= NO_KEDRO_BELOW:
            continue
        if library == "mlflow" and unit(name) in MLFLOW_ALLOWED:
            continue
        if any(imported == library or imported.startswith(f"{library}.") for imported in imports_of(path)):
            offenders.append(name)
    assert offenders == []


def test_the_top_of_the_package_holds_only_the_shell_and_the_core_vocabulary():
    top = {path.stem for path in SOURCE.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"move {sorted(top - TOP_LEVEL_MODULES)} into a package"


def test_the_rules_above_are_what_docs_architecture_md_draws():
    document = (SOURCE.parents[1] / "docs" / "architecture.md").read_text()
    for name, units in LAYERS:
        assert name in document
        for each in units - {"__init__", "__main__"}:
            assert f"`{each}" in document, f"docs/architecture.md does not place {each}"


def test_old_catalog_type_strings_and_the_registered_models_class_path_still_resolve():
    from kedro.io import DataCatalog

    import aavae.datasets
    import aavae.mlflow_model
    from aavae.kedro_ext import datasets
    from aavae.serving import mlflow_model

    assert aavae.datasets.ArraysDataset is datasets.ArraysDataset
    assert aavae.mlflow_model.EncoderModel is mlflow_model.EncoderModel
    catalog = DataCatalog.from_config({"old": {"type": "aavae.datasets.ArraysDataset", "filepath": "x.npz"},
                                       "new": {"type": "aavae.kedro_ext.datasets.ArraysDataset",
                                               "filepath": "y.npz"}})
    assert {type(catalog.get(name)) for name in ("old", "new")} == {datasets.ArraysDataset}


@pytest.mark.parametrize("rule, owner, call", [
    ("torch files are read weights-only, in one place", "common.weights", ("torch", "load")),
    ("the CPU's bf16 units are probed in one place", "common.hardware", (None, "cpu_has_fast_bf16")),
])
def test_a_rule_has_one_owner(rule, owner, call):
    """Calls of ``torch.load`` anywhere but its owner; definitions of the probe anywhere else."""
    module, name = call
    found = []
    for each, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if module and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == name and getattr(node.func.value, "id", None) == module:
                found.append(each)
            if not module and isinstance(node, ast.FunctionDef) and node.name == name:
                found.append(each)
    assert set(found) == {owner}, f"{rule}: found in {sorted(set(found))}"


def test_test_files_share_builders_through_tests_helpers_not_through_each_other():
    tests = Path(__file__).resolve().parent
    borrowed = [f"{path.relative_to(tests)} imports {name}" for path in sorted(tests.rglob("test_*.py"))
                for name in imports_of(path) if name.startswith("tests.") and ".test_" in f".{name}"]
    assert borrowed == []


def test_no_pipeline_imports_another_pipelines_nodes():
    crossing = [f"{importer} imports {imported}" for importer, imported in project_edges()
                if importer.startswith("pipelines.") and imported.startswith("pipelines.")
                and importer.split(".")[1] != imported.split(".")[1] and imported.endswith(".nodes")]
    assert crossing == []
