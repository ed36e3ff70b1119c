"""The speed budget in a real browser: how long each interaction takes to show its result on a run
of 1,000 scored images (and the Embeddings page for 2,000), in headless Chromium against
``streamlit run app.py``. Prints a table (run: python benchmarks/browser_speed.py [--sizes 1000,2000]).

Budget (issue #13): every interaction shows its result within 1 s, the Embeddings page opens within
3 s for 2,000 points; training and report export are excluded. Times run from the action (a click, a
key, a page load) to the text or chart that shows its result, so they include the server's work,
the websocket and the browser's drawing.

The runs are built here, without training for real: a small autoencoder fitted on four demo photos
provides the weights, and the results are N rows over the demo set's photos (scores, embeddings,
anomaly maps and the stored default map drawn at random in the proportions of a real run). That is
the data the pages read; what a method learned does not change how fast they read it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adcore.data import load_image, open_image_set  # noqa: E402
from adcore.methods import FitContext, build_method  # noqa: E402
from adcore.photo_cache import thumbnail_stack  # noqa: E402
from adcore.projection import DEFAULT_MAP_KEY  # noqa: E402
from adcore.runs import new_run_id, write_run  # noqa: E402
from adcore.scoring import image_metrics  # noqa: E402
from tests.test_browser import (  # noqa: E402
    CHROMIUM, CHROMIUM_ARGS, Timings, _fresh, _metric_value, _nav, _opened, _page_ready, _visible_point, serve_app,
)

DEMO = ROOT / "sample_data"
BUDGET_S = 1.0
EMBEDDINGS_BUDGET_S = 3.0
# Shares of a run's rows, as training writes them: fit, hold-out, test and synthetic defects.
SHARES = {"fit": 0.6, "holdout": 0.15, "test": 0.2, "synthetic": 0.05}


def build_run(runs_root: Path, n: int, seed: int = 0) -> Path:
    """A run folder of ``n`` rows over the demo set's photos, with a real (tiny) autoencoder's weights."""
    rng = np.random.default_rng(seed)
    demo = open_image_set(DEMO)
    method = build_method("autoencoder", image_size=32, epochs=1, width=8, batch_size=4)
    method.fit([load_image(r.path) for r in demo.normal_train[:4]], FitContext())
    counts = {role: int(round(n * share)) for role, share in SHARES.items()}
    rel, split, label, role, score = [], [], [], [], []
    for kind, k in counts.items():
        pool = demo.test if kind == "test" else demo.normal_train
        for i in range(k):
            record = pool[i % len(pool)]
            defect = kind == "synthetic" or not record.is_normal
            rel.append(record.rel_path)
            split.append("synthetic" if kind == "synthetic" else record.split)
            label.append("synthetic cutpaste" if kind == "synthetic" else record.label)
            role.append(kind)
            score.append(rng.normal(2.0 if defect else 0.0, 1.0))
    m = len(rel)
    results = {
        "rel_path": np.array(rel), "split": np.array(split), "label": np.array(label), "role": np.array(role),
        "score": np.array(score),
        "embedding": rng.normal(size=(m, 64)).astype(np.float32),
        "anomaly_map": rng.random((m, 64, 64)).astype(np.float16),
        DEFAULT_MAP_KEY: rng.normal(size=(m, 2)).astype(np.float32),
    }  # fmt: skip
    # As training stores them: the synthetic rows' thumbnails (here of the photos they name, unpasted:
    # the pages' speed does not depend on what the pixels show).
    synthetic = [load_image(DEMO / r) for r, kind in zip(rel, role) if kind == "synthetic"]
    results["synthetic_thumbnail"], results["synthetic_thumbnail_shape"] = thumbnail_stack(synthetic)
    test = results["role"] == "test"
    config = {
        "name": f"{n} images", "method": "autoencoder", "params": method.get_params(),
        "augmentations": [], "learns_pasted_defects": False, "holdout_fraction": 0.2, "budget_s": None,
        "data": {"path": str(DEMO), "root": str(DEMO), "layout": demo.layout, "n_fit": counts["fit"],
                 "n_holdout": counts["holdout"], "n_test": counts["test"], "defect_classes": demo.defect_classes},
        "skipped": [], "device": "cpu", "created": "2026-01-01T00:00:00+00:00", "train_seconds": 1.0,
        "score_images_per_second": 1.0, "stopped_by_budget": False,
        "metrics": {**image_metrics(results["score"][test], results["label"][test] != "good"), "pixel_auroc": None},
    }  # fmt: skip
    return write_run(runs_root, new_run_id("autoencoder"), config=config, method=method, history=[], results=results)


def _home_shown(page) -> None:
    """The home page's title and step headings drawn, its images loaded (``_page_ready`` also waits a
    fixed 0.3 s for the script to settle, which is no part of how long the page took)."""
    page.get_by_role("heading", name="Anomaly Inspector", level=1).wait_for()
    page.get_by_role("heading", name="4 · Share").wait_for()
    page.wait_for_function("() => [...document.images].every(i => i.complete)")


def measure(url: str, n: int, full: bool, profile: Path) -> list[tuple[str, float]]:
    """The interactions on the run at ``url``'s runs folder; ``full``: all of them, else Embeddings only.
    ``profile``: the browser's user-data folder (its cache); an empty one is a brand-new browser."""
    from playwright.sync_api import expect, sync_playwright

    timings = Timings()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900}
        )
        try:
            context.set_default_timeout(120_000)
            page = context.pages[0] if context.pages else context.new_page()
            timings.measure("load the app in the browser (home page)", lambda: page.goto(url),
                            lambda: _home_shown(page))  # fmt: skip
            _page_ready(page, "Anomaly Inspector")
            # A second tab of the same browser: a new session, with the app's files in the browser's cache
            # (how a user who has opened the app before meets it).
            tab = context.new_page()
            timings.measure("load the app in a new tab (browser cache warm)", lambda: tab.goto(url),
                            lambda: _home_shown(tab))  # fmt: skip
            if full:  # the path a user takes from the home page: straight to the threshold
                _page_ready(tab, "Anomaly Inspector")
                tab.wait_for_timeout(1000)
                alarms = _metric_value(tab, "False alarms")
                timings.measure("open Scores & threshold from the home page", lambda: _nav(tab, "Scores & threshold"),
                                lambda: _opened(tab, "Scores & threshold", alarms))  # fmt: skip
            tab.close()
            chart = _fresh(page, "stPlotlyChart").first
            timings.measure(f"open Embeddings ({n} points)", lambda: _nav(page, "Embeddings"),
                            lambda: _opened(page, "Embeddings", chart))  # fmt: skip
            _page_ready(page, "Embeddings")
            if full:
                page.wait_for_timeout(1000)
                x, y = _visible_point(page, chart)
                selected = page.get_by_text("1 selected", exact=False)
                timings.measure("select one point on the map", lambda: page.mouse.click(x, y),
                                lambda: expect(selected).to_be_visible())  # fmt: skip
                alarms = _metric_value(page, "False alarms")
                timings.measure("open Scores & threshold from Embeddings", lambda: _nav(page, "Scores & threshold"),
                                lambda: _opened(page, "Scores & threshold", alarms))  # fmt: skip
                _page_ready(page, "Scores & threshold")
                page.get_by_text("Score value", exact=True).click()
                slider = page.locator('input[type=range][aria-label^="Threshold (anomaly score"]:not([disabled])')
                expect(slider).to_have_count(1)
                before = alarms.inner_text()
                timings.measure("move the threshold slider", lambda: slider.press("Home"),
                                lambda: expect(alarms).not_to_have_text(before))  # fmt: skip
                picker = page.get_by_role("combobox", name="Image (", exact=False)
                timings.measure("open Inspect", lambda: _nav(page, "Inspect"), lambda: _opened(page, "Inspect", picker))
                _page_ready(page, "Inspect")
                before = picker.input_value()
                timings.measure("next image on Inspect", lambda: page.get_by_role("button", name="Next").click(),
                                lambda: expect(picker).not_to_have_value(before))  # fmt: skip
                table = _fresh(page, "stDataFrame").first
                timings.measure("open Compare", lambda: _nav(page, "Compare"),
                                lambda: _opened(page, "Compare runs", table))  # fmt: skip
        finally:
            context.close()
    return timings.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000", help="run sizes; the first gets every interaction")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium")
    # Columns: each run size, on a first visit (the server reads the run) and on a second one.
    table: dict[str, dict[str, float]] = {}
    columns = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(sizes):
            runs = Path(tmp) / f"runs-{n}"
            build_run(runs, n)
            with serve_app(runs, Path(tmp) / f"streamlit-{n}.log") as url:
                # A new browser right after the server started, a new one again, then that one reopened
                # with what it cached (as a user meets the app the next time).
                for visit, profile in (("first", "a"), ("again", "b"), ("returning", "b")):
                    column = f"{n:,} {visit}"
                    columns.append(column)
                    for what, seconds in measure(url, n, full=i == 0, profile=Path(tmp) / f"profile-{n}-{profile}"):
                        table.setdefault(what.replace(f"({n} points)", "(N points)"), {})[column] = seconds
    width = max(len(what) for what in table)
    print(f"\n{'interaction':<{width}}  " + "  ".join(f"{c:>15}" for c in columns) + "  budget  verdict")
    for what, cells in table.items():
        budget = EMBEDDINGS_BUDGET_S if what.startswith("open Embeddings") else BUDGET_S
        row = "  ".join(f"{cells[c]:>13.2f} s" if c in cells else f"{'':>15}" for c in columns)
        print(f"{what:<{width}}  {row}  {budget:>4.0f} s  {'OK' if max(cells.values()) <= budget else 'over'}")
    print("\nfirst: a new browser, right after the server started (it still loads torch and scikit-learn, and reads "
          "the run);\nagain: another new browser (empty cache); returning: that browser started again with its "
          "cache, as a user meets the app the next time.")


if __name__ == "__main__":
    main()
