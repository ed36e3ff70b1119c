"""The HTML report: one self-contained file (no network to view it) with the run's set-up, metrics,
threshold, plots and top anomalies; from the library and from ``python -m adcore report``."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from adcore import viz
from adcore.cli import main as cli_main
from adcore.report import build_report
from adcore.runs import load_run, update_config
from adcore.threshold import Threshold, threshold_for
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec

TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return train_run(TrainSpec(method="autoencoder", data=str(make_tiny_mvtec(root / "set")), params=TINY, name="tiny"), root / "runs")


def markup(page: str) -> str:
    """The page without its scripts (plotly.js itself mentions websites and data URIs)."""
    return re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)


def pictures(page: str) -> int:
    return markup(page).count('src="data:image/png;base64,')


def external_references(page: str) -> list[str]:
    """src/href attributes that would make the browser fetch something (anything but data: URIs and anchors)."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", markup(page))
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_cli_writes_a_self_contained_report(run_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli_main(["report", "--run", str(run_dir), "--out", str(out), "--top", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert external_references(page) == []
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page)
    assert page.count("Plotly.newPlot") >= 4  # distributions, ROC, PR, embedding map
    assert page.count("plotly.js v") == 1 or page.count("* plotly.js") == 1, "plotly.js inlined exactly once"
    # Set-up, metrics, threshold and its reliability, the confusion matrix, top anomalies with heat maps.
    run = load_run(run_dir)
    threshold = threshold_for(run, None)
    for text in ("Set-up", "autoencoder", "Image AUROC", "Confusion matrix", "Scores during training",
                 f"Threshold {threshold.value:.4g}", "Top 3 anomalies", "Embedding map"):  # fmt: skip
        assert text in page, text
    assert "false alarms (95 % CI" in page
    assert pictures(page) == 6  # 3 anomalies x (photo + heat map)
    assert not list(tmp_path.glob(".*incomplete")), "written via a temporary name"


def test_report_uses_the_threshold_and_scores_it_is_given(run_dir):
    run = load_run(run_dir)
    scores = -run.results["score"]  # a different scoring, as an embedding scorer would give
    page = build_report(run, scores=scores, threshold=Threshold(1.5, "set by hand"), scored_by="a test scorer",
                        embedding_map=False, top_k=2)  # fmt: skip
    assert "Threshold 1.5</b>: set by hand" in page and "scored by a test scorer" in page
    assert "Embedding map" not in page
    # The first tile is the highest of the new scores among images the model was not trained on.
    roles = run.results["role"]
    shown = np.flatnonzero((roles == "holdout") | (roles == "test"))
    best = run.results["rel_path"][shown[scores[shown].argmax()]]
    first_tile = re.search(r"<figcaption><b>([^<]+)</b>", markup(page)).group(1)
    assert first_tile == best


def test_saved_threshold_and_a_run_whose_images_are_gone(run_dir, tmp_path):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    update_config(copy, threshold=Threshold(0.25, "saved on the Scores page").to_dict(),
                  data={**load_run(copy).config["data"], "root": str(tmp_path / "moved away")})  # fmt: skip
    page = build_report(load_run(copy), embedding_map=False, top_k=2)
    assert "Threshold 0.25</b>: saved on the Scores page" in page
    assert page.count("image not readable") == 2
    assert pictures(page) == 2  # the stored heat maps still shown


def test_a_normal_only_run_reports_without_a_confusion_matrix(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=12, n_defect=0)
    run = load_run(train_run(TrainSpec(method="autoencoder", data=str(data), params=TINY), tmp_path / "runs"))
    page = build_report(run, embedding_map=False)
    assert "Confusion matrix on test normals" not in page
    assert "synthetic cutpaste (not real)" in page
    assert "Image AUROC" not in page  # nothing to measure it on
    assert "trained to find defects pasted this way" not in page  # an autoencoder did not learn pastes
    update_config(run.path, learns_pasted_defects=True)
    assert "trained to find defects pasted this way" in build_report(load_run(run.path), embedding_map=False)


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["report", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "error:" in capsys.readouterr().err


def test_report_figures_make_room_for_their_labels_and_ask_for_no_dragging(run_dir):
    page = build_report(load_run(run_dir))
    figures = re.findall(r"Plotly\.newPlot\(\s*\"figure-\d+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{\"displaylogo", page, re.S)
    assert len(figures) >= 4
    for _, layout in figures[:3]:  # distributions, ROC, PR: tick labels and group names fit in their margins
        assert layout.count('"automargin":true') >= 2, layout[:300]
    assert "drag the axis" not in page
    # ROC and PR share a row: once the page is complete each is sized to its half, not the whole row.
    assert re.search(r"<script>window\.addEventListener\('load'.*Plotly\.Plots\.resize", page)
    total = viz.format_seconds(load_run(run_dir).config["total_seconds"])
    assert re.search(rf"Run time</th><td>{total} \(loading \d+:\d\d · training \d+:\d\d · scoring", page)
