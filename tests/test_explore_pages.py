"""The Explore pages (Embeddings, Scores & threshold, Inspect, Compare) with Streamlit's AppTest, on
two tiny runs trained once for the module: one with labelled defects, one with normal images only.
Plus the pure helpers they draw with (adcore.viz). Runs in well under a minute on two cores."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest


from adcore import viz
from adcore.runs import Run, load_run, read_results
from adcore.threshold import default_threshold, synthetic_caveat
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec, texts  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app.py"
TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}
TIMEOUT_S = 60
PAGES = ("app_pages/embeddings.py", "app_pages/scores.py", "app_pages/inspect.py", "app_pages/compare.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs in one runs folder: "labelled" (test defects with masks) and "normal" (no defects)."""
    root = tmp_path_factory.mktemp("explore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning intra-op threads on a shared 2-core machine are ~50x slower
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADCORE_RUNS_DIR", str(root / "runs"))
        labelled = make_tiny_mvtec(root / "labelled")
        normal = make_tiny_mvtec(root / "normal", n_train=20, n_defect=0)
        paths = {
            "labelled": train_run(TrainSpec(method="autoencoder", data=str(labelled), params=TINY, name="labelled"), root / "runs"),
            "normal": train_run(TrainSpec(method="autoencoder", data=str(normal), params=TINY, name="normal only"), root / "runs"),
        }
        st.cache_resource.clear()
        st.cache_data.clear()
        yield {name: path.name for name, path in paths.items()} | {"root": root / "runs"}
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def runs_env(runs, monkeypatch):
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(runs["root"]))


def open_page(page: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    if run_id is not None:
        at.session_state["selected_run"] = run_id
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at



def captions(at: AppTest) -> str:
    return " | ".join(c for image in at.image for c in image.captions)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def confusion(at: AppTest) -> list[list[int]]:
    """The displayed confusion matrix: [[defects flagged, defects passed], [normals flagged, normals passed]]."""
    table = at.table[0].value
    return table[["flagged", "passed"]].astype(int).values.tolist()


def chart_titles(at: AppTest) -> list[str]:
    """The titles of the page's Vega-Lite charts, up to any " · " detail ("ROC · AUROC 0.9" is "ROC")."""
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    return [s["title"]["text"].split(" · ")[0] if "title" in s else "(untitled)" for s in specs]


def rerun(changed) -> AppTest:
    """Run the app after a widget change (``widget.set_value(...)`` or ``button.click()``)."""
    at = changed.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- every page -----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_for_a_labelled_run(runs, page):
    at = open_page(page, runs["labelled"])
    if page != "app_pages/compare.py":
        assert at.selectbox(key=f"{Path(page).stem}.run").value == runs["labelled"]
    assert at.session_state["selected_run"] == runs["labelled"]
    if page == "app_pages/embeddings.py":
        assert at.get("plotly_chart"), "the map"
        assert "16-number embedding" in texts(at)
    if page == "app_pages/scores.py":
        assert confusion(at)[0][0] + confusion(at)[0][1] == 3  # 3 test defects
        assert not at.get("plotly_chart"), "Vega-Lite charts only: plotly.js takes a new tab over a second to load"
        charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
        history = next(c for c in charts if c["layer"][0]["encoding"]["x"]["field"] == "epoch")
        assert "hold-out normal" in history["layer"][0]["encoding"]["color"]["scale"]["domain"]
        assert "recorded no scores" not in texts(at)
    if page == "app_pages/inspect.py":
        assert {"Anomaly score", "Decision", "Image threshold"} <= {m.label for m in at.metric}
        assert len(at.image) >= 3  # original, heat map (+ colour bar), predicted region
    if page == "app_pages/compare.py":
        table = at.dataframe[0].value
        assert set(table["name"]) == {"labelled", "normal only"}
        # Two tables that each fit the page: results (with the data beside the name), and set-up.
        assert [list(d.proto.column_order)[:2] for d in at.dataframe] == [["name", "data"], ["name", "method"]]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_for_a_normal_only_run(runs, page):
    open_page(page, runs["normal"])


@pytest.mark.parametrize("page", PAGES)
def test_without_runs_the_pages_say_where_to_start(tmp_path, monkeypatch, page):
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "empty"))
    at = open_page(page)
    assert "no trained model to explore yet" in texts(at)
    assert [link.proto.label for link in at.get("page_link")] == ["Train a model on the Train page first"]


# --- Scores & threshold -----------------------------------------------------------------------------


def test_moving_the_threshold_changes_the_confusion_matrix(runs):
    at = open_page("app_pages/scores.py", runs["labelled"])
    prefix = f"scores.{runs['labelled']}.method"
    assert at.radio(key=f"{prefix}.mode").value == "False-alarm target"  # the default drives
    run = load_run(runs["root"] / runs["labelled"])
    assert at.session_state["explore.threshold"][runs["labelled"]]["threshold"]["value"] == default_threshold(run).value

    rerun(at.radio(key=f"{prefix}.mode").set_value("Score value"))
    slider = at.slider(key=f"{prefix}.value")
    rerun(slider.set_value(slider.min))  # below every score: everything flagged
    assert confusion(at) == [[3, 0], [3, 0]]
    assert metric(at, "False alarms") == "3 of 3" and metric(at, "Missed defects") == "0 of 3"
    assert metric(at, "Recall") == "100 %"
    assert "flags all" in texts(at), "a warning when every hold-out normal is flagged"
    rerun(at.slider(key=f"{prefix}.value").set_value(at.slider(key=f"{prefix}.value").max))  # nothing flagged
    assert confusion(at) == [[0, 3], [0, 3]]
    assert metric(at, "False alarms") == "0 of 3" and metric(at, "Precision") == "–"

    rerun(at.button(key=f"{prefix}.f1").click())
    assert at.radio(key=f"{prefix}.mode").value == "Score value"
    assert "best F1" in texts(at)
    rerun(at.button(key=f"{prefix}.save").click())
    saved = json.loads((runs["root"] / runs["labelled"] / "config.json").read_text())
    assert saved["threshold"]["details"]["rule"] == "f1_optimal" and saved["scorer"] is None
    assert "saved with the run" in texts(at)
    # Compare and Inspect decide with the same threshold.
    at.switch_page("app_pages/inspect.py").run()
    assert metric(at, "Image threshold") == f"{saved['threshold']['value']:.4g}"


def test_target_false_alarm_rate_drives_and_the_value_follows(runs):
    at = open_page("app_pages/scores.py", runs["labelled"])
    prefix = f"scores.{runs['labelled']}.method"
    rerun(at.button(key=f"{prefix}.default").click())
    rerun(at.slider(key=f"{prefix}.target").set_value(50.0))  # half of the 2 hold-out normals
    chosen = at.session_state["explore.threshold"][runs["labelled"]]["threshold"]
    assert chosen["details"]["rule"] == "false_alarm_rate" and chosen["details"]["flagged"] == 1
    shown = [s for s in at.slider if s.label.startswith("Threshold") and s.disabled]
    assert shown and shown[0].value == pytest.approx(chosen["value"], abs=shown[0].step)


def test_a_normal_only_run_gets_an_honest_threshold(runs):
    at = open_page("app_pages/scores.py", runs["normal"])
    page = texts(at)
    assert "only normal images" in page
    run = load_run(runs["root"] / runs["normal"])
    n_holdout = run.config["data"]["n_holdout"]
    assert f"Set from {n_holdout} normal images held out from training: expect about" in at.info[1].value
    assert metric(at, "Hold-out normals flagged") == f"0 of {n_holdout}"  # never flags every one
    assert "a first estimate before any real defect has been collected" in page
    assert "Synthetic cutpaste defects (pasted onto hold-out normals, not real)" in page
    columns = [list(t.value.columns) for t in at.table]
    assert columns == [["group", "images", "flagged", "share flagged", "flagged means"]], "no confusion matrix"
    assert chart_titles(at) == ["Anomaly scores by group", "(untitled)"], "and scores during training (Vega-Lite)"
    curves = at.toggle(key="scores.curves")
    assert not curves.value, "the curves wait behind their switch"
    assert curves.help.endswith("hold-out normals vs synthetic defects (not real).")
    rerun(curves.set_value(True))
    assert chart_titles(at) == ["Anomaly scores by group", "ROC", "Precision vs recall", "(untitled)"]
    assert "synthetic defects pasted onto the hold-out normals" in texts(at)
    assert not [b for b in at.button if b.key and b.key.endswith(".f1")], "no F1 without labelled defects"


def test_scores_page_offers_embedding_scorers(runs):
    at = open_page("app_pages/scores.py", runs["labelled"])
    scorer = at.selectbox(key=f"scores.{runs['labelled']}.scorer")
    rerun(scorer.set_value("centroid_euclidean"))
    assert at.radio(key=f"scores.{runs['labelled']}.centroid_euclidean.mode").value == "False-alarm target"
    assert "centroid_euclidean" in str(at.session_state["explore.threshold"][runs["labelled"]]["scorer"])


# --- Inspect ------------------------------------------------------------------------------------


def test_inspect_browses_reconstructs_and_scores_a_new_image(runs):
    at = open_page("app_pages/inspect.py", runs["labelled"])
    key = f"inspect.{runs['labelled']}.row"
    first = at.selectbox(key=key).value
    rerun(at.button(key="inspect.next").click())
    second = at.selectbox(key=key).value
    assert second != first
    rerun(at.button(key="inspect.prev").click())
    assert at.selectbox(key=key).value == first
    # Only the defect class, lowest score first.
    at.selectbox(key="inspect.group").set_value("spot")
    rerun(at.segmented_control(key="inspect.order").set_value("low"))
    run = load_run(runs["root"] / runs["labelled"])
    spot = np.flatnonzero(run.results["label"] == "spot")
    assert at.selectbox(key=key).options[0].startswith(f"1. score {run.results['score'][spot].min():.4g} · spot")
    assert at.selectbox(key=key).value in spot.tolist()
    assert "ground truth in red" in captions(at)
    images = len(at.image)
    rerun(at.toggle(key="inspect.reconstruct").set_value(True))
    assert len(at.image) == images + 1 and "Reconstruction by the model" in captions(at)

    png = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(png, format="PNG")
    rerun(at.file_uploader(key="inspect.upload").set_value([("part.png", png.getvalue(), "image/png")]))
    assert len([m for m in at.metric if m.label == "Anomaly score"]) == 2
    decisions = [m.value for m in at.metric if m.label == "Decision"]
    assert decisions[-1] in ("Flagged as anomalous", "Passed as normal")
    # The pixel slider is for browsing the run's images: moving it does not change the new image's region.
    region = [c for c in captions(at).split(" | ") if c.startswith("Predicted defect region")][-1]
    slider = at.slider(key=f"inspect.{runs['labelled']}.pixel")
    rerun(slider.set_value(slider.min))
    assert [c for c in captions(at).split(" | ") if c.startswith("Predicted defect region")][-1] == region
    assert "The decision comes from the image score alone" in texts(at)


def test_inspect_offers_no_reconstruction_for_a_method_that_does_not_rebuild(runs, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "runs" / runs["labelled"]
    shutil.copytree(runs["root"] / runs["labelled"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "method": "patchcore"}))
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "runs"))
    at = open_page("app_pages/inspect.py", runs["labelled"])
    assert not [t for t in at.toggle if t.key == "inspect.reconstruct"]
    assert at.get("image"), "the photo and its heat map are still shown"


def test_inspect_opens_on_an_image_picked_elsewhere(runs):
    at = open_page("app_pages/scores.py", runs["labelled"])
    button = next(b for b in at.button if ".gallery0." in (b.key or ""))
    row = int(button.key.rsplit(".", 1)[1])
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Inspect"
    assert at.selectbox(key=f"inspect.{runs['labelled']}.row").value == row


# --- Embeddings and Compare ---------------------------------------------------------------------


def test_embeddings_in_3d_and_coloured_by_score(runs):
    at = open_page("app_pages/embeddings.py", runs["labelled"])
    at.radio(key="embeddings.dims").set_value(3)
    at.slider(key="embeddings.perplexity").set_value(4)
    rerun(at.button[0].click())  # the form's Draw map
    assert "Selecting points works on the 2-D map only" in texts(at)
    rerun(at.segmented_control(key="embeddings.color").set_value("score"))
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert figure["data"][0]["type"] == "scatter3d" and "colorscale" in figure["data"][0]["marker"]
    assert list((runs["root"] / runs["labelled"] / "cache").glob("projection-tsne-3d-*.npy")), "cached on disk"


def test_compare_highlights_and_presents(runs):
    at = open_page("app_pages/compare.py", runs["labelled"])
    assert at.multiselect(key="compare.runs").value[0] == runs["labelled"]
    assert len(at.multiselect(key="compare.runs").value) == 2
    # The two runs were trained on different data: nothing is marked best across them, and both views say so.
    styles = [d.proto.arrow_data.styler.styles for d in at.dataframe]
    assert not any("background" in style for style in styles), "no 'best' across different data"
    caveat = "Not comparable: these runs were trained and tested on different data"
    assert caveat in " ".join(w.value for w in at.warning)
    assert len(at.get("vega_lite_chart")) == 2, "each run's score distribution"
    rerun(at.segmented_control(key="compare.view").set_value("roc"))
    assert at.get("plotly_chart")
    rerun(at.toggle(key="compare.presentation").set_value(True))
    assert not at.dataframe and not at.multiselect, "the presentation view hides the table and controls"
    assert "Image AUROC" in {m.label for m in at.metric}
    assert caveat in " ".join(w.value for w in at.warning), "the caveat stays in the presentation view"


# --- pure helpers (adcore.viz) --------------------------------------------------------------------


def test_heat_map_overlay_region_and_colours():
    lut = viz.colormap_lut("Inferno")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and tuple(lut[0]) == (0, 0, 4)
    image = np.zeros((40, 60, 3), np.uint8)
    amap = np.zeros((4, 4), np.float16)
    amap[1:3, 1:3] = 1.0
    none = viz.overlay_heatmap(image, amap, 0.0)
    full = viz.overlay_heatmap(image, amap, 1.0, low=0.0, high=1.0)
    assert np.array_equal(none, image) and full.shape == (40, 60, 3)
    assert tuple(full[20, 30]) == tuple(lut[-1]) and tuple(full[0, 0]) == tuple(lut[0])
    region = viz.region_mask(amap, 0.5, (40, 60))
    assert region.shape == (40, 60) and region[20, 30] and not region[0, 0]
    assert viz.colorbar_strip(0, 1, width=32, height=4).shape == (4, 32, 3)


def test_slider_range_best_columns_and_titles():
    span = viz.threshold_slider_range(np.array([0.12, 0.5, 3.7]))
    assert span.low < 0.12 and span.high > 3.7 and span.step == pytest.approx(0.001) and span.format == "%.3f"
    assert viz.threshold_slider_range(np.array([-1.0, 76.6])).step == pytest.approx(0.01)
    assert span.clip(99) == span.high
    rows = [
        {"image AUROC": 0.9, "training s": 5.0, "data": "a"},
        {"image AUROC": None, "training s": 2.0, "data": "a"},
        {"image AUROC": 0.95, "training s": 2.0, "data": "a"},
        {"image AUROC": 0.99, "training s": 1.0, "data": "b"},  # alone on its data: never "best"
    ]
    assert viz.best_per_column(rows) == {"image AUROC": {2}, "training s": {1, 2}}
    rows.append({"image AUROC": 0.5, "training s": 9.0, "data": "b"})
    assert viz.best_per_column(rows) == {"image AUROC": {2, 3}, "training s": {1, 2, 3}}
    assert viz.run_title({"created": "2026-01-02T03:04:05+00:00"}, "20260102-030405-patchcore-abc123") == (
        "patchcore-abc123 · 01-02 03:04"
    )
    points = [{"customdata": [4, 1.5]}, {"customdata": [4, 1.5]}, {"x": 1}, {"customdata": {"1": 0.2, "0": 7}}]
    assert viz.selected_rows({"points": points}) == [4, 7]


def test_score_context_groups_gallery_and_synthetic_images(runs):
    run = load_run(runs["root"] / runs["labelled"])
    ctx = viz.score_context(run)
    assert ctx.order[:3] == ["train normal", "hold-out normal", "test normal"] and "spot" in ctx.order
    view = viz.threshold_view(ctx, float(np.median(ctx.scores)))
    alarms, total = view.gallery["False alarms among hold-out and test normals"]
    assert total == int((ctx.scores[ctx.normal_rows] >= view.threshold).sum())
    nearest, shown = view.gallery["Nearest the threshold"]
    assert shown == len(nearest) == 8, "the tab counts the images it shows, not every candidate"
    assert all(ctx.groups[r] in ("hold-out normal", "test normal") for r in alarms)
    # A synthetic row is pasted again exactly as training did: it differs from its hold-out source.
    synthetic = int(np.flatnonzero(run.results["role"] == "synthetic")[0])
    source = int(np.flatnonzero(run.results["rel_path"] == run.results["rel_path"][synthetic])[0])
    pasted, original = viz.run_row_images(run, [synthetic, source])
    assert pasted.shape == original.shape and not np.array_equal(pasted, original)
    score = run.load_method(torch.device("cpu")).predict([pasted]).scores[0]
    assert score == pytest.approx(run.results["score"][synthetic], rel=1e-4), "the very image training scored"
    assert viz.row_name(run.results, synthetic).startswith("synthetic cutpaste on ")


def test_rows_of_a_run_whose_images_are_gone(runs):
    run = load_run(runs["root"] / runs["labelled"])
    run.config = {**run.config, "data": {"root": "/nonexistent"}}
    synthetic = int(np.flatnonzero(run.results["role"] == "synthetic")[0])
    assert viz.run_row_images(run, [0, synthetic]) == [None, None]


def test_score_history_figure_draws_a_box_per_group_and_epoch():
    history = {
        "epoch": np.array([1, 1, 1, 2, 2, 2]),
        "group": np.array(["hold-out normal", "hold-out normal", "synthetic cutpaste"] * 2),
        "score": np.array([0.1, 0.2, 0.9, 0.1, 0.15, 1.4]),
    }
    figure = viz.score_history_figure(history)
    assert [t.name for t in figure.data] == ["hold-out normal", "synthetic cutpaste (not real)"]
    assert list(figure.data[1].x) == [1, 2] and list(figure.data[1].y) == [0.9, 1.4]


def test_far_out_synthetic_scores_do_not_squeeze_the_real_ones(tmp_path):
    groups = [("fit", "good", 0.0), ("holdout", "good", 0.0), ("test", "good", 0.2), ("test", "dent", 1.0),
              ("synthetic", "synthetic cutpaste", 100.0)]  # fmt: skip
    role = np.repeat([g[0] for g in groups], 5)
    label = np.repeat([g[1] for g in groups], 5)
    score = np.repeat([g[2] for g in groups], 5) + np.tile(np.linspace(0, 1, 5), len(groups))
    results = {"rel_path": np.array([f"{i}.png" for i in range(role.size)]), "split": role, "label": label,
               "role": role, "score": score}  # fmt: skip
    ctx = viz.score_context(Run(tmp_path, {"method": "fake", "params": {}}, [], results))
    figure = viz.score_distribution_figure(ctx, 1.5)
    low, high = figure.layout.xaxis.range
    assert low < 0 and 2.0 < high < 10, "the axis ends a little beyond the real scores, not at 101"
    assert "5 synthetic score(s) up to 101 lie further right" in figure.layout.xaxis.title.text  # under the axis


def test_the_pages_vega_charts_draw_the_same_boxes_axis_and_threshold_as_the_report(tmp_path):
    role = np.repeat(["holdout", "test", "test", "synthetic"], 9)
    label = np.repeat(["good", "good", "dent", "synthetic cutpaste"], 9)
    score = np.repeat([0.0, 0.2, 1.0, 100.0], 9) + np.tile(np.linspace(0, 1, 9), 4)
    results = {"rel_path": np.array([f"{i}.png" for i in range(role.size)]), "split": role, "label": label,
               "role": role, "score": score}  # fmt: skip
    ctx = viz.score_context(Run(tmp_path, {"method": "fake", "params": {}}, [], results))
    spec = viz.score_distribution_chart(ctx, 1.5)
    data = [layer["data"]["values"] for layer in spec["layer"]]
    threshold, boxes, points = data[0][0], data[3], data[6]
    assert threshold["t"] == 1.5 and threshold["text"] == "threshold 1.5 → flagged"
    dent = next(b for b in boxes if b["group"] == "dent · 9")
    assert (dent["q1"], dent["median"], dent["q3"]) == pytest.approx((1.25, 1.5, 1.75))
    assert (dent["low"], dent["high"]) == pytest.approx((1.0, 2.0))
    assert len(points) == 36 and points[0]["name"] == "0.png", "every image a point, named for its tooltip"
    x = spec["layer"][3]["encoding"]["x"]
    low, high = x["scale"]["domain"]
    assert low < 0 and 2.0 < high < 10, "the axis ends a little beyond the real scores, not at 101"
    assert x["axis"]["title"][1] == "9 synthetic score(s) up to 101 lie further right"
    history = {"epoch": np.array([1, 1, 2, 2]), "group": np.array(["hold-out normal"] * 4),
               "score": np.array([0.1, 0.3, 0.2, 0.6])}  # fmt: skip
    boxes = viz.score_history_chart(history)["data"]["values"]
    assert [(b["epoch"], b["median"]) for b in boxes] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.4))]


def test_every_vega_chart_is_a_valid_vega_lite_spec(tmp_path):
    """The pages build their specs as plain dicts (no run-time schema check): check them against the
    Vega-Lite schema here, with and without a threshold, with a marked point on each curve."""
    jsonschema = pytest.importorskip("jsonschema")
    from altair.vegalite.v6.schema import load_schema  # Streamlit's own dependency; only the schema is used

    role = np.repeat(["train", "holdout", "test", "test", "synthetic"], 6)
    label = np.repeat(["good", "good", "good", "dent", "synthetic scar"], 6)
    score = np.repeat([0.0, 0.1, 0.2, 1.0, 3.0], 6) + np.tile(np.linspace(0, 1, 6), 5)
    results = {"rel_path": np.array([f"{i}.png" for i in range(role.size)]), "split": role, "label": label,
               "role": role, "score": score}  # fmt: skip
    ctx = viz.score_context(Run(tmp_path, {"method": "fake", "params": {}}, [], results))
    view = viz.threshold_view(ctx, 1.2, chosen_from_reference=True, show_train=True, curves=True, vega=True)
    history = {"epoch": np.array([1, 1, 2, 2]), "group": np.array(["hold-out normal", "synthetic scar"] * 2),
               "score": np.array([0.1, 0.3, 0.2, 0.6])}  # fmt: skip
    specs = {"distribution": view.distribution, "no threshold": viz.score_distribution_chart(ctx, None),
             "roc": view.roc, "pr": view.pr, "history": viz.score_history_chart(history)}  # fmt: skip
    assert view.roc is not None and len(view.roc["layer"]) == 3, "the curve with its operating point"
    validator = jsonschema.Draft7Validator(load_schema())
    for name, spec in specs.items():
        errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(spec)))]
        assert not errors, f"{name}: {errors[:3]}"
    broken = {**specs["roc"], "mark": "curve"}  # and the check can fail
    assert list(validator.iter_errors(json.loads(json.dumps(broken))))


def test_synthetic_recall_is_flagged_as_optimistic_when_the_method_learned_such_pastes(runs, tmp_path, monkeypatch):
    import json
    import shutil

    caveat = "was trained to find defects pasted this way"
    assert load_run(runs["root"] / runs["normal"]).config["learns_pasted_defects"] is False  # an autoencoder
    assert caveat not in texts(open_page("app_pages/scores.py", runs["normal"]))
    # The same run as if its method had trained on CutPaste defects (CutPaste, the PatchCore segmenter).
    folder = tmp_path / "runs" / runs["normal"]
    shutil.copytree(runs["root"] / runs["normal"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "learns_pasted_defects": True}))
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "runs"))
    assert caveat in " ".join(w.value for w in open_page("app_pages/scores.py", runs["normal"]).warning)
    # Runs saved before the config said so: a CutPaste run is known by its method.
    del config["learns_pasted_defects"]
    (folder / "config.json").write_text(json.dumps({**config, "method": "cutpaste"}))
    assert synthetic_caveat(load_run(folder)).startswith("cutpaste was trained to find defects pasted this way")


def test_a_run_without_embeddings_or_maps(runs, tmp_path, monkeypatch):
    """Methods that give only an image score: every page still works and says what is missing."""
    import shutil

    folder = tmp_path / "runs" / runs["labelled"]
    shutil.copytree(runs["root"] / runs["labelled"], folder)
    with np.load(folder / "results.npz") as data:
        kept = {k: data[k] for k in data.files if k not in ("embedding", "anomaly_map")}
    np.savez_compressed(folder / "results.npz", **kept)
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "runs"))
    at = open_page("app_pages/embeddings.py", runs["labelled"])
    assert "stores no embeddings" in texts(at) and not at.get("plotly_chart")
    at = open_page("app_pages/scores.py", runs["labelled"])
    assert not [s for s in at.selectbox if s.label == "Image score"], "no embedding scorers without embeddings"
    at = open_page("app_pages/inspect.py", runs["labelled"])
    assert "This method gives no anomaly map" in texts(at)


def test_inspect_scores_with_a_model_file_and_refuses_a_bad_one(runs, tmp_path):
    from adcore.export import export_run

    model = export_run(runs["root"] / runs["labelled"], tmp_path / "m.adcore").read_bytes()
    at = open_page("app_pages/inspect.py", runs["labelled"])
    rerun(at.segmented_control(key="inspect.score_with").set_value("A model file"))
    broken = bytearray(model)
    broken[len(broken) // 2] ^= 0xFF
    rerun(at.file_uploader(key="inspect.model_file").set_value([("m.adcore", bytes(broken), "application/octet-stream")]))
    assert any("m.adcore is damaged or was modified" in e.value for e in at.error), [e.value for e in at.error]
    rerun(at.file_uploader(key="inspect.model_file").set_value([("m.adcore", model, "application/octet-stream")]))
    assert not at.error and "m.adcore: autoencoder from run" in texts(at)
    png = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(png, format="PNG")
    rerun(at.file_uploader(key="inspect.upload").set_value([("part.png", png.getvalue(), "image/png")]))
    from adcore.threshold import threshold_for

    exported = threshold_for(load_run(runs["root"] / runs["labelled"]), None)
    assert [m.label for m in at.metric][-3:] == ["Anomaly score", "Decision", "Image threshold"]
    assert at.metric[-1].value == f"{exported.value:.4g}", "judged at the file's own threshold"


def test_compare_offers_the_model_file_and_report_downloads(runs):
    at = open_page("app_pages/compare.py", runs["labelled"])
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Model file", "HTML report"]
    assert at.selectbox(key="compare.handoff").value == runs["labelled"]


def test_few_shot_classifier_is_cross_validated_on_the_scores_page(runs):
    at = open_page("app_pages/scores.py", runs["labelled"])
    rerun(at.button(key="scores.fewshot").click())
    labels = [m.label for m in at.metric]
    assert "Classifier AUROC (out of fold)" in labels and "The run's own score, same images" in labels
    folds = at.dataframe[-1].value
    # 2 hold-out + 3 test normals and 3 defects: 3 folds, every labelled image scored exactly once.
    assert folds["scored"].sum() == 8 and len(folds) == 3
    at.run()  # any later rerun (a slider moved) keeps the result on the page
    assert "Classifier AUROC (out of fold)" in [m.label for m in at.metric]
    normal = open_page("app_pages/scores.py", runs["normal"])
    assert "Once some labelled defect images" in texts(normal)


def test_embedding_map_tells_every_group_apart_and_colours_scores_low_to_high():
    order = ["train normal", "hold-out normal", "scratch", "synthetic cutpaste", "synthetic cutpaste scar"]
    groups = np.repeat(order, 40)
    scores = np.linspace(0.0, 1.0, groups.size)
    scores[-1] = 100.0  # one outlier must not squeeze the others into the middle of the scale
    coords = np.random.default_rng(0).normal(size=(groups.size, 2))
    names = [f"img{i}" for i in range(groups.size)]
    fig = viz.embedding_figure(coords, groups, order, scores, names)
    styles = [(t.marker.color, t.marker.symbol) for t in fig.data]
    assert len(set(styles)) == len(order), styles
    synthetic = [t for t in fig.data if "synthetic" in t.name]
    assert synthetic[0].marker.color != synthetic[1].marker.color
    assert synthetic[0].marker.symbol != synthetic[1].marker.symbol
    by_score = viz.embedding_figure(coords, groups, order, scores, names, color_by="score")
    marker = by_score.data[0].marker
    assert marker.colorscale[0][1] != marker.colorscale[-1][1]
    assert marker.cmin == pytest.approx(np.percentile(scores, 1)) and marker.cmax < 50
    # The lowest colour of the scale is the palest one: low scores do not look mid-range.
    low, high = (np.array(pc_rgb(c[1])) for c in (marker.colorscale[0], marker.colorscale[-1]))
    assert low.sum() > high.sum()


def pc_rgb(colour: str) -> tuple[int, ...]:
    import plotly.colors as pc

    return pc.unlabel_rgb(pc.convert_colors_to_same_type(colour, colortype="rgb")[0][0])


def test_scores_page_shows_where_the_heat_map_points_when_masks_exist(runs):
    config = load_run(runs["root"] / runs["labelled"]).config["metrics"]
    assert config["hit_rate_images"] == 3 and config["hit_rate"] is not None and config["pixel_pro"] is not None
    at = open_page("app_pages/scores.py", runs["labelled"])
    assert metric(at, "Heat map on the defect") == f"{round(config['hit_rate'] * 3)} of 3"
    assert metric(at, "Region overlap (PRO, 30 %)") == f"{config['pixel_pro']:.2f}"
    at = open_page("app_pages/scores.py", runs["normal"])
    assert "Heat map on the defect" not in {m.label for m in at.metric}


def test_a_run_s_synthetic_defects_are_pasted_once_for_every_picture_of_them(runs, monkeypatch, tmp_path):
    from app_pages import common

    calls = []
    paste = viz.synthetic_images
    counted = lambda run: calls.append(run.run_id) or paste(run)  # noqa: E731
    monkeypatch.setattr(viz, "synthetic_images", counted)  # the pages' call
    monkeypatch.setattr(viz.run_images, "synthetic_images", counted)  # and the row readers' own
    st.cache_resource.clear()
    st.cache_data.clear()
    run = common.load_run_scores(runs["root"] / runs["labelled"])
    synthetic = [int(r) for r in np.flatnonzero(run.results["role"] == "synthetic")]
    assert len(synthetic) >= 3
    thumbs = common.row_thumbnails(run, synthetic[:1]) + common.row_thumbnails(run, synthetic[1:3])
    assert calls == [], "the galleries show the thumbnails the run stored: nothing is pasted for them"
    image = common.run_row_image(run, synthetic[0])  # Inspect
    common.run_row_image(run, synthetic[1])
    assert calls == [runs["labelled"]]
    assert image.ndim == 3
    # The stored thumbnails are those of the very images training pasted and scored.
    pasted = viz.synthetic_images(run)
    assert len(run.results["synthetic_thumbnail"]) == len(pasted) == len(synthetic)
    for thumb, image in zip(thumbs, pasted):
        assert np.array_equal(thumb, viz.fit_size(image, 160))
    # A run stored before the thumbnails were (none in its results) pastes them again, once.
    old_path = tmp_path / runs["labelled"]
    shutil.copytree(run.path, old_path)
    arrays = read_results(old_path)
    del arrays["synthetic_thumbnail"], arrays["synthetic_thumbnail_shape"]
    np.savez_compressed(old_path / "results.npz", **arrays)
    calls.clear()
    old = common.row_thumbnails(common.load_run_scores(old_path), synthetic[:3])
    assert calls == [runs["labelled"]] and all(np.array_equal(a, b) for a, b in zip(old, thumbs))


def test_compare_names_the_image_size_a_self_configuring_run_chose():
    config = {"method": "auto", "params": {"image_size": 0}, "selection": {"image_size": 256}, "data": {}}
    assert viz.comparison_row(config, "r1", {"image_size": 0}, 0.5, None)["image size"] == 256
    fixed = {"method": "patchcore", "params": {"image_size": 224}, "data": {}}
    assert viz.comparison_row(fixed, "r2", {"image_size": 224}, 0.5, None)["image size"] == 224
