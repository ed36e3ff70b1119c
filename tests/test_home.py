"""The home page with Streamlit's AppTest: the four steps and their state, and one-click training."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from adcore import catalog
from adcore.jobs import FINISHED
from adcore.methods import DEFAULT_METHOD, get_method_class
from adcore.runs import load_run, update_config
from adcore.threshold import Threshold
from adcore.training import TrainSpec
from app_pages import common
from tests.helpers import make_tiny_mvtec, texts
from tests.test_pages import runs_dir  # noqa: F401  (autouse: a fresh runs folder and job manager per test)

APP = Path(__file__).resolve().parent.parent / "app.py"
TIMEOUT_S = 60


def home(image_set=None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    if image_set is not None:
        at.session_state["image_set"] = image_set
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_app_opens_on_the_four_steps_for_the_demo_set():
    at = home()
    assert at.title[0].value == "Anomaly Inspector"
    page = texts(at)
    assert [h for h in page.splitlines() if h.startswith("#### ")] == [
        "#### 1 · Data", "#### 2 · Train", "#### 3 · Threshold", "#### 4 · Share"
    ]
    assert "80 normal photos, 50 test photos with 30 masks in the demo set." in page
    assert "No run on this set yet." in page and "Train a model first." in page and "Nothing to share yet." in page
    train = at.button(key="home.train")
    assert train.label == "Train the recommended method on this set" and not train.disabled
    estimate = next(c.value for c in at.caption if c.value.endswith("on this set."))
    assert estimate.startswith(f"{get_method_class(DEFAULT_METHOD).title}: about ")


def test_one_click_trains_the_recommended_method_and_the_steps_follow(tmp_path, monkeypatch):
    image_set = common.open_set(str(make_tiny_mvtec(tmp_path / "tiny")))
    tiny = TrainSpec(data=str(image_set.root), method="autoencoder", name="recommended",
                     params={"image_size": 32, "epochs": 1, "width": 8, "batch_size": 4})  # fmt: skip
    asked = []
    monkeypatch.setattr(catalog, "recommended_spec", lambda data: asked.append(data) or tiny)  # a quick stand-in
    at = home(image_set)
    at.button(key="home.train").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert asked == [str(image_set.root)]
    assert at.title[0].value == "Train", "the Train page shows the job"
    job = common.job_manager().get(at.session_state["train.job_id"])
    common.job_manager().wait(job, timeout=TIMEOUT_S)
    assert job.status == FINISHED

    at.switch_page("app_pages/home.py").run()
    page = texts(at)
    assert "Latest run: **recommended**, Convolutional autoencoder, image AUROC" in page
    assert "Threshold not saved: the default (5 % false alarms) is used." in page
    assert "Ready, with the default threshold" in page
    update_config(job.run_dir, threshold=Threshold(1.5, "set by hand").to_dict())
    at.run()
    assert "Threshold saved: 1.5 (set by hand)." in texts(at)
    assert "Ready: a model file and an HTML report of the latest run." in texts(at)
    assert load_run(job.run_dir).config["name"] == "recommended"


def test_the_recommended_run_is_the_default_method_with_its_defaults_and_a_budget():
    spec = catalog.recommended_spec("/data/parts")
    assert spec.method == DEFAULT_METHOD and spec.params == {} and spec.augmentations is None
    assert spec.budget_s == catalog.RECOMMENDED_BUDGET_S and spec.data == "/data/parts"


def test_a_set_too_small_to_train_cannot_be_trained_with_one_click(tmp_path):
    image_set = common.open_set(str(make_tiny_mvtec(tmp_path / "one", n_train=1, n_test_good=0, n_defect=0)))
    at = home(image_set)
    assert at.button(key="home.train").disabled
    assert "1 normal photo in" in texts(at)


def test_while_the_recommended_run_trains_home_offers_to_watch_it_not_to_queue_another(tmp_path):
    image_set = common.open_set(str(make_tiny_mvtec(tmp_path / "tiny")))
    slow = TrainSpec(data=str(image_set.root), method="autoencoder", name="slow",
                     params={"image_size": 32, "epochs": 2000, "width": 8, "batch_size": 4})  # fmt: skip
    manager = common.job_manager()
    job = manager.submit(slow, image_set=image_set)
    try:
        at = home(image_set)
        assert not [b for b in at.button if b.key == "home.train"], "no second one-click run while one trains"
        assert "Training Convolutional autoencoder:" in texts(at)
    finally:
        job.cancel()
        manager.wait(job, timeout=TIMEOUT_S)
    at.run()
    assert at.button(key="home.train").label == "Train the recommended method on this set"


def test_the_home_page_has_the_browser_load_every_other_pages_element_code():
    # Every named element is found in the installed Streamlit (a version that renames its files fails
    # here, not silently in the browser), and the home page hands their files to the browser.
    files = common._element_files()
    assert [f.split(".")[0] for f in files] == list(common.PREFETCHED_ELEMENTS)
    at = home()
    scripts = [h.proto.body for h in at.get("html")]
    assert any(all(f in body for f in files) and "import(" in body for body in scripts), scripts
