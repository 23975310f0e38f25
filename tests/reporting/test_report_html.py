"""Tests of the HTML report (aavae.reporting.report_html), its figures, and the report the pipeline writes."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from aavae.reporting import report_html
from aavae.reporting.plots import (
    curves_figure,
    embedding_figure,
    figure_png,
    image_grid,
    retrieval_figure,
)
from aavae.reporting.report import leads
from aavae.reporting.report import main as report_main
from aavae.reporting.report_html import (
    ReportImage,
    flatten_params,
    loss_curves_image,
    reconstructions_caption,
    render_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = {
    "dataset": "digits",
    "objective": "aavae",
    "epochs": 2,
    "protocol": "frozen_features",
    "training_run_id": "run-1",
    "checkpoint": None,
    "linear_top1": 0.7333,
    "linear_top5": 0.9622,
    "knn_top1": 0.7044,
    "knn_top5": 0.9733,
    "per_class": {"<cat>": 0.5, "dog": None},
    "baselines": {
        "random_init": {"linear_top1": 0.8955, "linear_top5": 0.99, "knn_top1": 0.9,
                        "knn_top5": 0.995, "per_class": {"<cat>": 0.75, "dog": 1.0}},
        "raw_pixels": {"linear_top1": 0.96, "linear_top5": 1.0, "knn_top1": 0.5,
                       "knn_top5": 1.0, "per_class": {"<cat>": 1.0, "dog": 0.25}},
    },
}


class _Document(HTMLParser):
    """Collects tags, image sources, table cells and checks that elements close in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.images: list[dict[str, str]] = []
        self.cells: list[tuple[str, str]] = []  # (class, text) of every td
        self._cell: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "td":
            self._cell = (dict(attrs).get("class", ""), [])

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1].append(data)


def parse(document: str) -> _Document:
    parsed = _Document()
    parsed.feed(document)
    parsed.close()
    assert parsed.open == [], f"unclosed elements: {parsed.open}"
    return parsed


def small_png(colour: str = "red") -> bytes:
    image = np.zeros((1, 4, 4, 3), np.uint8)
    return figure_png(image_grid([image], [colour]), dpi=30)


def test_report_is_one_well_formed_self_contained_page():
    pngs = [small_png("a"), small_png("b")]
    document = render_report(
        METRICS,
        {"model": {"width": 16, "encoder": "resnet18"}, "pretrain.objective": "aavae"},
        [ReportImage("Loss curves", pngs[0], "per epoch"), ReportImage("Embedding", pngs[1])],
        title="A report",
        notes=["Parameters from MLflow run run-1."],
    )
    parsed = parse(document)

    assert document.startswith("<!DOCTYPE html>")
    assert "script" not in parsed.tags and "<script" not in document.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", document), "nothing is fetched from outside"
    sources = [image["src"] for image in parsed.images]
    assert [base64.b64decode(src.split(",", 1)[1]) for src in sources] == pngs
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "A report" in document and "Parameters from MLflow run run-1." in document


def test_report_tables_hold_the_accuracies_of_the_model_and_every_baseline():
    parsed = parse(render_report(METRICS, {}))
    texts = [text for _, text in parsed.cells]

    for row in ("aavae (pretrained)", "random_init (baseline)", "raw_pixels (baseline)"):
        assert row in texts
    for value in ("73.33%", "96.22%", "70.44%", "97.33%", "89.55%", "96.00%"):
        assert value in texts
    best = {text for cls, text in parsed.cells if "best" in cls.split()}
    assert best == {"96.00%", "100.00%", "90.00%"}  # best linear top-1, top-5, kNN top-1/top-5
    assert "\u2013" in texts, "an undefined per-class score shows as a dash"


def test_report_escapes_text_and_lists_flattened_parameters():
    document = render_report(METRICS, {"model": {"width": 16}, "note": "<b>x</b>"})
    assert "&lt;cat&gt;" in document and "<cat>" not in document
    assert "&lt;b&gt;x&lt;/b&gt;" in document
    texts = [text for _, text in parse(document).cells]
    assert "model.width" in texts and "16" in texts


def test_report_summary_names_the_checkpoint_and_protocol():
    document = render_report({**METRICS, "checkpoint": "/ckpt/last.ckpt", "protocol": "paper"}, {})
    assert "/ckpt/last.ckpt" in document and "paper" in document


@pytest.mark.parametrize("epochs, said", [(0.44, True), (1, False), (30, False), (None, False)])
def test_a_run_shorter_than_an_epoch_is_explained_in_both_reports(epochs, said, tmp_path, capsys):
    metrics = {**METRICS, "epochs": epochs}
    document = render_report(metrics, {})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert report_main([str(path)]) == 0
    printed = capsys.readouterr().out
    for text in (document, printed):
        assert ("0.44 of an epoch" in text and "not that the method failed" in text) is said
    if said:
        assert "pretraining epochs</dt><dd>0.44" in document


CUT = {"max_time_minutes": 8, "planned_steps": 500, "planned_epochs": 2.56}


@pytest.mark.parametrize("cut, said", [(CUT, True), (None, False)])
def test_a_run_its_time_limit_stopped_says_so_in_both_reports(cut, said, tmp_path, capsys):
    metrics = {**METRICS, "epochs": 1.54, "cut_by_time_limit": cut}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert report_main([str(path)]) == 0
    printed = capsys.readouterr().out
    for text in (render_report(metrics, {}), printed):
        assert ("stopped by its time limit (pretrain.max_time_minutes=8) after 1.54 of the 2.56 epochs"
                in " ".join(text.split())) is said
    assert ("(epochs: 1.54, stopped by pretrain.max_time_minutes)" in printed) is said


FLAT_LABELS = {"linear_top5": "linear top-5", "knn_top5": "kNN top-5", "knn_top1": "kNN top-1"}


@pytest.mark.parametrize("flat", [("linear_top5",), ("knn_top5",), ("linear_top5", "knn_top5"), ("knn_top1",)])
def test_a_column_where_every_row_scores_100_percent_comes_last_unmarked_and_never_leads(flat):
    metrics = json.loads(json.dumps(METRICS))
    for row in [metrics, *metrics["baselines"].values()]:
        row.update(dict.fromkeys(flat, 1.0))
    accuracy = render_report(metrics, {}).split("<h2>Per-class")[0]

    headings = re.findall(r'<th class="num">([^<]+)</th>', accuracy)
    assert sorted(headings[-len(flat):]) == sorted(FLAT_LABELS[key] for key in flat)
    rows = [re.findall(r'<td class="([^"]+)">', row) for row in re.findall(r"<tr><td>.*?</tr>", accuracy)]
    assert len(rows) == 3 and not any("best" in cls for row in rows for cls in row[-len(flat):])
    assert any("best" in cls for row in rows for cls in row), "the other columns still mark their best"
    assert not {heading for heading, _, _ in leads(metrics)} & {FLAT_LABELS[key] for key in flat}


def test_the_loss_plot_of_a_run_under_one_epoch_says_why_it_is_one_point(monkeypatch):
    drawn = []
    monkeypatch.setattr(report_html, "figure_png", lambda figure: drawn.append(figure) or small_png())
    image = loss_curves_image({"train_loss": [(9, 1087.8)]}, 0.44)

    (axes,) = drawn[0].axes
    assert axes.get_xlabel() == "training step" and "per epoch" not in axes.get_title(), "no epoch axis promised"
    assert "no validation curve: validation runs at the end of each full epoch, and this run stopped " \
        "after 0.44 of one" in image.caption
    assert "single point" in image.caption
    full = loss_curves_image({"train_loss": [(9, 1087.8), (19, 993.1)], "val_loss": [(9, 1071.8), (19, 990.0)]}, 2)
    assert "validation curve" not in full.caption and "single point" not in full.caption
    assert loss_curves_image({}, 0.44) is None


@pytest.mark.parametrize("epochs, expected", [(2, "nearly the same grey blur for every image"),
                                              (30, "a hint of each digit at epoch 30"), (None, None)])
def test_the_reconstructions_say_what_to_expect_at_this_training_length(epochs, expected):
    caption = reconstructions_caption(epochs)
    assert caption.startswith("Held-out images, the augmented view the encoder saw")
    assert (expected in caption) if expected else caption.endswith("at the end of pretraining.")


def test_flatten_params_uses_mlflows_dotted_names():
    assert flatten_params({"model": {"width": 16, "stem": {"kind": "cifar"}}, "seed": 0}) == {
        "model.width": "16", "model.stem.kind": "cifar", "seed": "0"}


def test_report_figures_render_to_png():
    rng = np.random.default_rng(0)
    figures = [
        embedding_figure(rng.normal(size=(30, 2)), rng.integers(0, 3, 30), ["a", "b", "c"], "map"),
        curves_figure({"train_loss": [(1, 2.0), (2, 1.5)], "val_loss": [(1, 2.2), (2, 1.9)]}, "loss"),
        retrieval_figure(
            rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8),
            rng.integers(0, 255, (2, 3, 8, 8, 3), dtype=np.uint8),
            np.array([0, 1]), np.array([[0, 1, 0], [1, 1, 0]]), ["a", "b"], rng.random((2, 3)),
        ),
    ]
    for figure in figures:
        assert figure_png(figure, dpi=40).startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- the pipeline's report


@pytest.mark.slow
def test_evaluate_pipeline_writes_the_report_and_embedding(digits_project):
    reporting = digits_project / "data/test/08_reporting"
    metrics = json.loads((reporting / "metrics.json").read_text())
    assert metrics["protocol"] == "frozen_features"
    for scores in (metrics, *metrics["baselines"].values()):
        assert {"linear_top1", "linear_top5", "knn_top1", "per_class", "few_label_1_top1",
                "few_label_1_top1_sd"} <= set(scores)
    assert metrics["few_label_draws"] == 3  # conf/test

    document = (reporting / "report.html").read_text()
    parsed = parse(document)
    headings = re.findall(r"<h3>([^<]+)</h3>", document)
    assert headings == ["Loss curves", "Training views", "Reconstructions", "Confusion matrix",
                        "Embedding"]
    assert len(parsed.images) == 5
    assert "pretrain.objective" in [text for _, text in parsed.cells], "MLflow params of training"
    assert (reporting / "embedding.png").read_bytes().startswith(PNG_SIGNATURE)

    client = MlflowClient(tracking_uri=f"sqlite:///{digits_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("aavae")
    runs = {r.info.run_name.split()[0]: r for r in client.search_runs([experiment.experiment_id])}
    artifacts = {item.path for item in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert {"embedding.png", "report.html"} <= artifacts
