"""End to end: the real app (`streamlit run app.py`) driven in headless Chromium with Playwright.

Starts on the home page (its four steps, then one click trains the recommended method on the demo
set), uploads files none of which is usable (the demo set stays), walks Data -> Augmentations ->
Train, trains a small model, checks that the UI stays responsive while it trains and that a second
tab sees the same job, then opens every Explore page on the new run (clicks one point and lassoes
others on the embedding map, moves the threshold and checks the counts follow, shows a
reconstruction), and saves a full-page screenshot of each page to artifacts/screenshots/ to look at.
Prints how long each interaction took to show its result (a benchmark table, not an assertion).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from adcore.catalog import RECOMMENDED_BUDGET_S

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TRAIN_TIMEOUT_MS = 180_000
# One click trains the recommended method with its defaults; it stops at its time budget at the latest.
RECOMMENDED_TIMEOUT_MS = (RECOMMENDED_BUDGET_S + 300) * 1000

pytestmark = pytest.mark.browser


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = "Chromium not installed at /usr/bin/chromium: install Debian's chromium to run the browser test"
    if os.environ.get("ADCORE_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (ADCORE_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"streamlit did not become healthy in {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve_app(runs_dir: Path, log: Path) -> Iterator[str]:
    """A Streamlit server for app.py on a free port with ``runs_dir`` as its runs folder, logging to
    ``log``; yields its URL and is stopped afterwards. Fails if it logged a traceback."""
    port = _free_port()
    env = dict(os.environ, ADCORE_RUNS_DIR=str(runs_dir))
    # On a small shared machine torch's spinning intra-op threads make training many times slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        sys.executable, "app.py",  # as dev.sh app starts it: the server, its libraries loading beside it
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture
def app_url(tmp_path):
    """The app with its own runs folder, for one test."""
    with serve_app(tmp_path / "runs", tmp_path / "streamlit.log") as url:
        yield url


def _page_ready(page, title: str) -> None:
    """Wait until the page shows its title and Streamlit has finished running the script."""
    page.get_by_role("heading", name=title, level=1).wait_for()
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    page.wait_for_timeout(300)
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id("stException").first.inner_text()


def _screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside stMain, so grow the window to its content first."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = size["height"]
    for _ in range(10):  # until the window holds all of the content (images and charts grow it)
        content = page.evaluate("() => document.querySelector('[data-testid=stMain]').scrollHeight")
        if content <= height:
            break
        height = content
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(400)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    page.set_viewport_size(size)


def _metric_value(page, label: str):
    """The value of the metric ``label``; a stale copy that lingers while a fragment reruns is skipped."""
    fresh = page.locator('[data-testid="stElementContainer"]:not([data-stale="true"])')
    return fresh.filter(has=page.get_by_test_id("stMetric").filter(has_text=label)).get_by_test_id("stMetricValue")


def _metric(page, label: str) -> str:
    return _metric_value(page, label).inner_text()


def _go(page, title: str, heading: str | None = None) -> None:
    _nav(page, title)
    _page_ready(page, heading or title)


def _nav(page, title: str) -> None:
    """Click the sidebar link to page ``title`` (without waiting for the page)."""
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()


def _fresh(page, test_id: str):
    """Elements ``test_id`` of the page as it is now drawn, not stale copies of the page before."""
    fresh = page.locator('[data-testid="stElementContainer"]:not([data-stale="true"])')
    return fresh.filter(has=page.get_by_test_id(test_id)).get_by_test_id(test_id)


def _opened(page, heading: str, result) -> None:
    """Wait until page ``heading`` shows ``result`` (a locator), for timing how long a page takes to open."""
    page.get_by_role("heading", name=heading, level=1).wait_for()
    result.first.wait_for()


class Timings:
    """Seconds from an action to its result on the page, per interaction, printed as a table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def measure(self, what: str, action, result) -> None:
        """Run ``action()``, then wait for ``result()`` (a Playwright wait) and record the time taken."""
        started = time.monotonic()
        action()
        result()
        self.rows.append((what, time.monotonic() - started))

    def table(self) -> str:
        width = max(len(what) for what, _ in self.rows)
        lines = [f"{'interaction':<{width}}  seconds", f"{'-' * width}  -------"]
        lines += [f"{what:<{width}}  {seconds:7.2f}" for what, seconds in self.rows]
        return "\n".join(lines)


def test_data_augment_train_in_a_browser(app_url, tmp_path):
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    timings = Timings()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(60_000)
            page = context.new_page()
            sent = []  # when the browser sent something to the server (reruns, widget changes)
            page.on("websocket", lambda ws: ws.on("framesent", lambda _: sent.append(time.monotonic())))

            # Home: what the tool does and the four steps with their state for the demo set.
            timings.measure("open the app (home page)", lambda: page.goto(app_url),
                            lambda: _page_ready(page, "Anomaly Inspector"))  # fmt: skip
            for step in ("1 · Data", "2 · Train", "3 · Threshold", "4 · Share"):
                expect(page.get_by_role("heading", name=step)).to_be_visible()
            expect(page.get_by_text("80 normal photos, 50 test photos with 30 masks in the demo set.")).to_be_visible()
            expect(page.get_by_text("No run on this set yet.")).to_be_visible()
            expect(page.get_by_text("Train a model first.")).to_be_visible()
            _screenshot(page, "home")

            # One click trains the recommended method; the Train page shows it until it finishes.
            started = time.monotonic()
            page.get_by_role("button", name="Train the recommended method on this set").click()
            _page_ready(page, "Train")
            expect(page.get_by_text("Finished in")).to_be_visible(timeout=RECOMMENDED_TIMEOUT_MS)
            timings.rows.append(("one-click training of the recommended method", time.monotonic() - started))
            expect(page.get_by_text(re.compile(r"loading \d+:\d\d · training \d+:\d\d"))).to_be_visible()
            _screenshot(page, "train-recommended")
            _go(page, "Home", "Anomaly Inspector")
            expect(page.get_by_text("Latest run: recommended")).to_be_visible()
            expect(page.get_by_text("Threshold not saved")).to_be_visible()
            _screenshot(page, "home-after-training")

            # Data: the demo set is the working set; an upload none of whose files is usable keeps it.
            timings.measure("open the Data page", lambda: _nav(page, "Data"),
                            lambda: _opened(page, "Data", _metric_value(page, "Normal training images")))  # fmt: skip
            _page_ready(page, "Data")
            assert _metric(page, "Normal training images") == "80"
            bad = [tmp_path / "notes.png", tmp_path / "empty.jpg"]
            bad[0].write_bytes(b"this is not a png")
            bad[1].write_bytes(b"")
            _upload(page, "Images or zip files", *bad)
            page.get_by_role("button", name="Use the uploaded files").click()
            expect(page.get_by_text("None of the 2 uploaded files can be used")).to_be_visible(timeout=30_000)
            _page_ready(page, "Data")
            assert _metric(page, "Normal training images") == "80"
            expect(page.get_by_text("Now working on")).to_have_count(0)
            _screenshot(page, "data-bad-upload")
            assert _metric(page, "Test images") == "50"
            assert _metric(page, "Defect classes") == "4"
            expect(page.get_by_text("No files skipped")).to_be_visible()
            page.get_by_role("tab", name="Test: scratch (8)").click()  # thumbnails with mask outlines
            page.wait_for_timeout(500)
            _screenshot(page, "data")

            # Augmentations: add CutPaste to the chain; the preview shows 8 pairs.
            _go(page, "Augmentations")
            chooser = page.get_by_role("combobox", name="Augmentations, applied in this order")
            chooser.click()
            chooser.fill("CutPaste")
            page.get_by_role("option", name="CutPaste", exact=True).click()
            page.keyboard.press("Escape")
            expect(page.get_by_text("area max")).to_be_visible()
            _page_ready(page, "Augmentations")
            expect(page.get_by_test_id("stImage")).to_have_count(8)
            _screenshot(page, "augmentations")

            # Train: a small autoencoder at 32 px, stopped by a 15 s time budget at the latest.
            _go(page, "Train")
            page.get_by_text("Convolutional autoencoder", exact=True).click()
            _page_ready(page, "Train")
            page.locator('input[type=range][aria-label="image size"]').press("Home")
            expect(page.get_by_text("at 32×32 px")).to_be_visible()
            for label, value in (("epochs", "40"), ("Time budget (minutes)", "0.25")):
                box = page.locator(f'input[aria-label="{label}"]')
                box.fill(value)
                box.press("Enter")
                page.wait_for_timeout(400)
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_test_id("stProgress")).to_be_visible()
            expect(page.get_by_text("training: step")).to_be_visible(timeout=60_000)
            # .first: while a fragment reruns, Streamlit may briefly keep a stale copy of the chart.
            expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=30_000)
            _screenshot(page, "train-running")

            # While it trains, the other pages answer and a second tab sees the same job.
            started = time.monotonic()
            _go(page, "Data")
            assert _metric(page, "Normal training images") == "80"
            data_seconds = time.monotonic() - started
            assert data_seconds < 15, f"the Data page took {data_seconds:.1f} s while training"
            other = context.new_page()
            other.goto(f"{app_url}/train")
            _page_ready(other, "Train")
            expect(other.get_by_test_id("stProgress").or_(other.get_by_text("Finished in"))).to_be_visible()
            other.close()

            # Back on Train the job finishes and its run is listed.
            _go(page, "Train")
            expect(page.get_by_text("Finished in")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
            expect(page.get_by_test_id("stProgress")).to_have_count(0)
            # Polling stops with the job: an idle page sends nothing.
            page.wait_for_timeout(1500)
            quiet_from = time.monotonic()
            page.wait_for_timeout(3000)
            assert not [t for t in sent if t > quiet_from], "the page still polls after the job ended"
            assert float(_metric(page, "Image AUROC")) >= 0
            expect(page.get_by_text("No runs yet")).to_have_count(0)
            expect(page.get_by_test_id("stDataFrame")).to_have_count(1)
            _screenshot(page, "train")

            _explore_the_run(page, expect, timings)
            _hand_it_on(browser, page, expect)
        finally:
            browser.close()
            if timings.rows:
                print("\n" + timings.table())


def _explore_the_run(page, expect, timings: Timings) -> None:
    """Every Explore page on the run just trained (the Train page made it the selected run)."""
    # Embeddings: the t-SNE map stored with the run; a click on one point shows that image, a
    # lasso round the left half of the map lists those images beside it.
    chart = _fresh(page, "stPlotlyChart").first
    timings.measure("open Embeddings (map stored with the run)", lambda: _nav(page, "Embeddings"),
                    lambda: _opened(page, "Embeddings", chart))  # fmt: skip
    _page_ready(page, "Embeddings")
    page.wait_for_timeout(1000)
    x, y = _visible_point(page, chart)
    one = page.get_by_text(re.compile(r"^1 selected"))
    timings.measure("select one point on the map", lambda: page.mouse.click(x, y),
                    lambda: expect(one).to_be_visible(timeout=30_000))  # fmt: skip
    _page_ready(page, "Embeddings")
    _still_screenshot(page, "embeddings-one-point")
    chart.locator('[data-title="Lasso Select"]').click()
    area = chart.locator(".nsewdrag").first.bounding_box()
    left, top, width, height = area["x"], area["y"], area["width"], area["height"]
    path = [(0.02, 0.02), (0.5, 0.02), (0.5, 0.98), (0.02, 0.98), (0.02, 0.03)]
    page.mouse.move(left + path[0][0] * width, top + path[0][1] * height)
    page.mouse.down()
    for fx, fy in path[1:]:
        page.mouse.move(left + fx * width, top + fy * height, steps=8)
    many = page.get_by_text(re.compile(r"^\d{2,} selected ·"))
    timings.measure("lasso half of the map", page.mouse.up, lambda: expect(many).to_be_visible(timeout=30_000))
    _page_ready(page, "Embeddings")
    _still_screenshot(page, "embeddings")

    # Scores & threshold: drive by score value; the slider's Home key flags every image, End none.
    timings.measure("open Scores & threshold", lambda: _nav(page, "Scores & threshold"),
                    lambda: _opened(page, "Scores & threshold", _metric_value(page, "False alarms")))  # fmt: skip
    _page_ready(page, "Scores & threshold")
    expect(page.get_by_text("Set from 16 normal images held out from training")).to_be_visible()
    before = _metric(page, "False alarms")
    page.get_by_text("Score value", exact=True).click()
    # Until the fragment has rerun, the disabled slider that showed the implied value may linger.
    slider = page.locator('input[type=range][aria-label="Threshold (anomaly score; flagged at or above)"]:not([disabled])')
    expect(slider).to_have_count(1)
    false_alarms = _metric_value(page, "False alarms")
    timings.measure("move the threshold slider", lambda: slider.press("Home"),
                    lambda: expect(false_alarms).to_have_text("20 of 20"))  # fmt: skip
    assert before != "20 of 20", f"the default threshold flags every normal test image ({before})"
    assert _metric(page, "Missed defects") == "0 of 30"
    expect(page.get_by_text("flags all 16 normal images held out from training")).to_be_visible()
    slider.press("End")
    expect(false_alarms).to_have_text("0 of 20")
    assert _metric(page, "Missed defects") == "30 of 30"
    page.get_by_role("button", name="Default: 5 % false alarms").click()
    expect(false_alarms).to_have_text(before)
    expect(page.get_by_role("radio", name="False-alarm target")).to_be_checked()
    _page_ready(page, "Scores & threshold")
    _still_screenshot(page, "scores")

    # Inspect, opened from the image nearest the threshold: heat map, and the reconstruction on demand.
    nearest = page.locator("[class*='gallery0'] button").first
    name = nearest.inner_text().strip().split()[-1]
    nearest.click()
    _page_ready(page, "Inspect")
    expect(page.get_by_role("combobox", name=re.compile(r"^Image \("))).to_have_value(re.compile(re.escape(name)))
    page.get_by_text("Reconstruction", exact=True).click()
    expect(page.get_by_text("Reconstruction by the model")).to_be_visible(timeout=60_000)
    picker = page.get_by_role("combobox", name=re.compile(r"^Image \("))
    before_next = picker.input_value()
    timings.measure("next image on Inspect", lambda: page.get_by_role("button", name="Next").click(),
                    lambda: expect(picker).not_to_have_value(before_next))  # fmt: skip
    expect(page.get_by_text("Reconstruction by the model")).to_be_visible(timeout=60_000)
    _page_ready(page, "Inspect")
    expect(page.get_by_text("can no longer be read")).to_have_count(0)
    _still_screenshot(page, "inspect")

    # Compare: the two runs on the demo set; the presentation view shows big numbers.
    _go(page, "Compare", "Compare runs")
    expect(page.get_by_test_id("stDataFrame")).to_have_count(2)  # results, and how each run was set up
    _still_screenshot(page, "compare")
    page.get_by_text("Presentation view").click()
    expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
    _page_ready(page, "Compare runs")
    _still_screenshot(page, "compare-presentation")


def _hand_it_on(browser, page, expect) -> None:
    """Compare's downloads: the HTML report opens offline with its plots drawn; the model file loads
    on Inspect and scores a dropped image."""
    _go(page, "Compare", "Compare runs")
    page.get_by_text("Presentation view").click()  # back to the full view, where the downloads are
    expect(page.get_by_role("button", name="HTML report")).to_be_visible()
    with page.expect_download(timeout=120_000) as report:
        page.get_by_role("button", name="HTML report").click()
    report_path = SCREENSHOTS.parent / "report.html"
    report.value.save_as(report_path)
    with page.expect_download(timeout=120_000) as model:
        page.get_by_role("button", name="Model file").click()
    model_path = SCREENSHOTS.parent / "model.adcore"
    model.value.save_as(model_path)

    offline = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
    try:
        fetched = []
        view = offline.new_page()
        view.on("request", lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        view.goto(report_path.resolve().as_uri())
        expect(view.get_by_role("heading", name="Top 8 anomalies")).to_be_visible()
        expect(view.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=30_000)
        assert view.locator(".js-plotly-plot").count() >= 4, "distributions, ROC, PR and the embedding map"
        assert view.locator(".tile img").count() == 16, "8 anomalies, each photo and heat map"
        assert fetched == [], f"the report fetched {fetched}"
        view.wait_for_timeout(500)
        view.screenshot(path=SCREENSHOTS / "report.png", full_page=True)
    finally:
        offline.close()

    _go(page, "Inspect")
    page.get_by_text("A model file", exact=True).click()
    _upload(page, "Model file (.adcore)", model_path)
    expect(page.get_by_text("model.adcore: autoencoder from run")).to_be_visible(timeout=60_000)
    _upload(page, "Drop an image to score it", ROOT / "sample_data/test/dent/000.jpg")
    expect(page.get_by_text("000.jpg", exact=False).first).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="Anomaly score")).to_have_count(2, timeout=60_000)
    _page_ready(page, "Inspect")
    _still_screenshot(page, "inspect-model-file")


def _visible_point(page, chart) -> tuple[float, float]:
    """Where one point of a plotly scatter is on the screen, after scrolling the plot into view."""
    chart.locator(".nsewdrag").first.scroll_into_view_if_needed()
    height = page.viewport_size["height"]
    for point in chart.locator(".scatterlayer .trace .points path").all():
        box = point.bounding_box()
        if box and 0 < box["y"] and box["y"] + box["height"] < height:
            return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    raise AssertionError("no point of the map is on the screen")


def _upload(page, label: str, *paths: Path) -> None:
    """Choose ``paths`` in the file uploader called ``label``, through its Upload button."""
    with page.expect_file_chooser() as chooser:
        page.get_by_role("region", name=label).get_by_role("button", name="Upload", exact=True).click()
    chooser.value.set_files([str(path) for path in paths])


def _still_screenshot(page, name: str) -> None:
    """A screenshot without a tooltip: the mouse is moved off whatever it last clicked."""
    page.mouse.move(2, 2)
    page.wait_for_timeout(300)
    _screenshot(page, name)
