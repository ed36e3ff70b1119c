"""Tests for the app's pages with Streamlit's AppTest (no browser), plus the helpers they use.

Training here is tiny (32 px images, a width-8 network) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.helpers import texts

from adcore import catalog, viz
from adcore.data import ImageSet, open_image_set
from adcore.jobs import CANCELLED, FINISHED
from adcore.methods import DEFAULT_METHOD, METHODS, get_method_class
from adcore.training import TrainSpec
from app_pages import common

APP = Path(__file__).resolve().parent.parent / "app.py"
TINY = {"image_size": 32, "width": 8, "latent_channels": 4, "batch_size": 4}
TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    """A fresh runs folder and a fresh JobManager per test; jobs left running are cancelled."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(runs))
    monkeypatch.delenv("ADCORE_DATA_DIR", raising=False)  # uploads go beside the runs folder: tmp_path/data
    # Two intra-op threads on a shared 2-core machine spin against each other (~50x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    st.cache_resource.clear()
    yield runs
    manager = common.job_manager()
    for job in manager.active():
        job.cancel()
    for job in manager.jobs():
        manager.wait(job, timeout=TIMEOUT_S)
    st.cache_resource.clear()
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_set(tmp_path):
    """A 20-image MVTec-layout set (32 px) so that training tests load and score in a blink."""
    root = tmp_path / "tiny"
    for i in range(12):
        _write(root / "train" / "good" / f"{i:03d}.png", _png(seed=i))
    for i in range(3):
        _write(root / "test" / "good" / f"{i:03d}.png", _png(seed=100 + i))
        _write(root / "test" / "spot" / f"{i:03d}.png", _png(seed=200 + i, spot=True))
        _write(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", _png(mask=True))
    return open_image_set(root)


def app_at(page: str | None = None, image_set: ImageSet | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    if image_set is not None:
        at.session_state["image_set"] = image_set
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at



def train_page(image_set: ImageSet | None = None, method: str = "autoencoder") -> AppTest:
    """The Train page with ``method`` picked (the tests below set the autoencoder's parameters)."""
    at = app_at("app_pages/train.py", image_set)
    at.radio(key="train.method").set_value(method).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def poll(at: AppTest, done, what: str, timeout: float = TIMEOUT_S) -> AppTest:
    """Rerun the page (as the browser's polling would) until ``done(at)`` or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if done(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page says:\n{texts(at)}")
        time.sleep(0.2)


def set_train_params(at: AppTest, **values) -> None:
    for name, value in values.items():
        key = f"train.autoencoder.param.{name}"
        widget = next(w for kind in ("slider", "number_input", "selectbox") for w in getattr(at, kind) if w.key == key)
        widget.set_value(value)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# --- pages ----------------------------------------------------------------------------------------


def test_data_page_shows_the_demo_set():
    at = app_at("app_pages/data.py")
    assert at.title[0].value == "Data"
    assert metric(at, "Normal training images") == "80"
    assert metric(at, "Test images") == "50"
    assert metric(at, "Defect classes") == "4"
    counts = at.dataframe[0].value
    assert list(counts["images"]) == [80, 20, 7, 8, 7, 8]
    assert list(counts["class"])[2:] == ["contamination", "dent", "missing_material", "scratch"]
    assert "No files skipped" in at.success[0].value
    assert "All 130 images are 256×256 px." in texts(at)
    # The upload area comes before the thumbnails (no scrolling past them), then a thumbnail group
    # per tab: normal training, then each test class.
    assert [t.label for t in at.tabs][:2] == ["Upload files", "Folder on the server"]
    assert [t.label for t in at.tabs][2:8] == [
        "Normal training (80)",
        "Test: good (20)",
        "Test: contamination (7)",
        "Test: dent (8)",
        "Test: missing_material (7)",
        "Test: scratch (8)",
    ]
    assert len(at.image) == 6
    assert not at.button(key="data.use_uploads").value and at.button(key="data.use_uploads").disabled


def test_data_page_uploads_images_and_lists_bad_files(tmp_path):
    at = app_at("app_pages/data.py")
    good = [(f"part{i}.png", _png(seed=i), "image/png") for i in range(3)]
    broken = ("notes.png", b"this is not a png", "image/png")
    at.file_uploader(key="data.uploads.0").set_value(good + [broken]).run()
    at.button(key="data.use_uploads").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert metric(at, "Normal training images") == "3"
    assert metric(at, "Skipped files") == "1"
    assert "Now working on the uploaded set" in at.success[-1].value and "3 usable images" in at.success[-1].value
    skipped = at.dataframe[1].value  # counts table, then the skipped files
    assert list(skipped["file"]) == ["notes.png"] and "not an image" in skipped["reason"][0]
    # Kept beside the runs folder (tmp_path/runs), and called by its name and time, never its path.
    root = Path(at.session_state["image_set"].root)
    assert root.parent == tmp_path / "data" / "uploads"
    name = common.set_name(at.session_state["image_set"])
    assert re.fullmatch(r"photos, added \d{4}-\d\d-\d\d \d\d:\d\d", name), name
    heading, message = at.markdown[0].value, at.success[-1].value
    assert f"Working on **{name}**" in heading and f"**{name}**" in message
    assert str(tmp_path) not in heading + message
    assert not at.file_uploader(key="data.uploads.1").value, "the uploader is emptied after use"
    at.button(key="data.demo").click().run()
    assert metric(at, "Normal training images") == "80"


def test_an_upload_with_no_usable_file_keeps_the_current_set_and_says_why(tmp_path):
    at = app_at("app_pages/data.py")
    bad = [("notes.png", b"this is not a png", "image/png"), ("empty.jpg", b"", "image/jpeg")]
    at.file_uploader(key="data.uploads.0").set_value(bad).run()
    at.button(key="data.use_uploads").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert metric(at, "Normal training images") == "80", "the demo set is still the working set"
    assert at.session_state["image_set"].root == common.DEMO_DIR
    assert not at.success or all("Now working on" not in s.value for s in at.success)
    assert "None of the 2 uploaded files can be used, so you are still working on the demo set" in at.error[0].value
    skipped = at.dataframe[-1].value
    assert sorted(skipped["file"]) == ["empty.jpg", "notes.png"]


def test_the_skipped_files_table_is_wide_enough_for_a_long_file_name(tmp_path):
    at = app_at("app_pages/data.py")
    long_name = "a_rather_long_file_name_from_the_line_camera_station_3_2026-11-30_14-22-05_frame_000123.png"
    at.file_uploader(key="data.uploads.0").set_value([(long_name, b"not a png", "image/png")]).run()
    at.button(key="data.use_uploads").click().run()
    table = at.dataframe[-1]
    assert list(table.value["file"]) == [long_name]
    width = json.loads(table.proto.columns)["file"]["width"]
    # The walk of issue 13 saw this name cut at 72 of its 94 characters in a 400 px column.
    assert isinstance(width, int) and width >= common.SKIPPED_CHAR_PX * len(long_name), width


def test_train_page_counts_a_one_photo_set_in_words(tmp_path):
    root = tmp_path / "one"
    _write(root / "good.png", _png(seed=1))
    at = app_at("app_pages/train.py", open_image_set(root))
    heading = next(m.value for m in at.markdown if m.value.startswith("Training on"))
    assert heading.endswith(": 1 normal training image, 0 test images."), heading
    assert any("has 1 normal training image; at least 2 are needed" in e.value for e in at.error), [
        e.value for e in at.error
    ]


def test_data_page_opens_a_server_folder(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setenv("ADCORE_DATA_ROOTS", str(tmp_path))  # the folders a visitor may open
    at = app_at("app_pages/data.py")
    at.text_input(key="data.folder").set_value(str(tmp_path / "missing")).run()
    at.button(key="data.open_folder").click().run()
    assert not at.exception and "no such file or folder" in at.error[0].value
    assert metric(at, "Normal training images") == "80", "a bad path keeps the current set"
    at.text_input(key="data.folder").set_value(str(tiny_set.root)).run()
    at.button(key="data.open_folder").click().run()
    assert metric(at, "Normal training images") == "12" and metric(at, "Masks") == "3"


def test_a_zip_upload_is_named_after_the_zip_and_kept_where_adcore_data_dir_says(tmp_path, monkeypatch):
    monkeypatch.setenv("ADCORE_DATA_DIR", str(tmp_path / "elsewhere"))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        for i in range(3):
            z.writestr(f"train/good/{i:03d}.png", _png(seed=i))
    at = app_at("app_pages/data.py")
    at.file_uploader(key="data.uploads.0").set_value([("Bottle caps.zip", zipped.getvalue(), "application/zip")]).run()
    at.button(key="data.use_uploads").click().run()
    assert not at.exception, [e.value for e in at.exception]
    root = Path(at.session_state["image_set"].root)
    assert root.parent == tmp_path / "elsewhere" / "uploads" and not (tmp_path / "data").exists()
    assert re.fullmatch(r"Bottle_caps, added [-\d]{10} \d\d:\d\d", common.set_name(at.session_state["image_set"]))
    assert "Now working on the uploaded set **Bottle_caps, added" in at.success[-1].value
    at.switch_page("app_pages/train.py").run()
    assert "Training on Bottle_caps, added" in at.markdown[0].value and str(tmp_path) not in at.markdown[0].value


def test_upload_helper_reports_a_refused_zip(tmp_path):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        for i in range(2):
            z.writestr(f"train/good/{i:03d}.png", _png(seed=i))
        z.writestr("test/crack/000.png", _png(seed=9))
        z.writestr("ground_truth/crack/000_mask.png", _png(mask=True))
    files = [("parts.zip", zipped.getvalue()), ("broken.zip", b"PK\x03\x04 truncated nonsense")]
    image_set = common.save_uploaded_files(files, tmp_path)
    assert image_set.layout == "mvtec" and image_set.root.parent == tmp_path
    assert len(image_set.normal_train) == 2
    assert [(r.label, r.mask_path is not None) for r in image_set.test] == [("crack", True)]
    refused = common.refused_zips(image_set.skipped)
    assert [s.rel_path for s in refused] == ["broken.zip"]
    assert refused[0].reason.startswith("zip refused")


def test_augmentations_page_previews_and_remembers_the_chain():
    at = app_at("app_pages/augmentations.py")
    assert at.title[0].value == "Augmentations"
    assert len(at.image) == 8  # 8 samples, each "original | augmented"
    assert {"CutPaste", "CutPaste scar", "Random resized crop"} <= set(at.multiselect(key="augment.names").options)
    at.multiselect(key="augment.names").set_value(["random_resized_crop", "cutpaste"]).run()
    at.slider(key="augment.cutpaste.area_max").set_value(0.3).run()
    assert not at.exception and not at.error
    assert len(at.image) == 8
    chain = at.session_state["augmentations"]
    assert [name for name, _ in chain] == ["random_resized_crop", "cutpaste"]
    assert chain[1][1]["area_max"] == pytest.approx(0.3)
    # Impossible settings are explained, not raised.
    at.slider(key="augment.random_resized_crop.min_scale").set_value(0.9)
    at.slider(key="augment.random_resized_crop.max_scale").set_value(0.5).run()
    assert not at.exception
    assert "min_scale 0.9 is above max_scale 0.5" in at.error[0].value
    # The chain survives a visit to another page.
    at.switch_page("app_pages/data.py").run()
    at.switch_page("app_pages/augmentations.py").run()
    assert at.multiselect(key="augment.names").value == ["random_resized_crop", "cutpaste"]


@pytest.mark.parametrize("method_name", METHODS.names())
def test_train_form_is_built_from_the_registry(method_name):
    at = app_at("app_pages/train.py")
    at.radio(key="train.method").set_value(method_name).run()
    assert not at.exception
    method = get_method_class(method_name)
    kinds = ("slider", "number_input", "selectbox", "toggle", "text_input")
    keys = {w.key for kind in kinds for w in getattr(at, kind)}
    assert {f"train.{method_name}.param.{p.name}" for p in method.param_specs()} <= keys
    # Every widget starts at the method's default: none is rounded away by a slider's step.
    widgets = {w.key: w.value for kind in kinds for w in getattr(at, kind)}
    for p in method.param_specs():
        assert widgets[f"train.{method_name}.param.{p.name}"] == pytest.approx(p.default), p.name
    # The augmentations start from the method's defaults, with the method's word on their role;
    # a method that uses none offers no chain and no preview pairs.
    if method.augmentation_role:
        assert method.augmentation_role in texts(at)
    if catalog.entry(method_name).uses_augmentations:
        assert at.multiselect(key=f"train.{method_name}.aug.names").value == [n for n, _ in method.default_augmentations]
        assert len(at.image) == 4  # the preview of what training sees
    else:
        assert not [m for m in at.multiselect if m.key == f"train.{method_name}.aug.names"]
        assert len(at.image) == 0
    assert "Nothing is training" in texts(at)
    assert "No runs yet" in texts(at)


def test_train_lists_the_recommended_method_first_with_groups_and_times():
    at = app_at("app_pages/train.py")
    picker = at.radio(key="train.method")
    assert picker.options[0] == get_method_class(DEFAULT_METHOD).title and picker.value == DEFAULT_METHOD
    captions = [c for c in picker.proto.captions]
    assert captions[0].startswith("Recommended · good for ")
    groups = [c.split(" · ")[0] for c in captions]
    assert groups == sorted(groups, key=catalog.GROUPS.index), "each group together, in order"
    assert {"Pretrained features", "Self-supervised from scratch", "Reconstruction"} <= set(groups)
    assert all(re.search(r"about \d+(\.\d)? (s|min|h)$", c) for c in captions), captions


def test_train_page_starts_from_the_augmentations_page_chain():
    at = train_page()
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["color_jitter"]
    assert "Training uses this chain: the method's defaults." in texts(at)
    at.switch_page("app_pages/augmentations.py").run()
    at.multiselect(key="augment.names").set_value(["cutpaste"]).run()
    at.switch_page("app_pages/train.py").run()
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["cutpaste"]
    assert "Training uses this chain: the one built on the Augmentations page." in texts(at)
    at.button(key="train.reset_chain").click().run()
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["color_jitter"]
    # Going back and forth without changing the page's chain keeps the Train page's own choice.
    at.switch_page("app_pages/augmentations.py").run()
    at.switch_page("app_pages/train.py").run()
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["color_jitter"]
    at.button(key="train.use_page_chain").click().run()
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["cutpaste"]


def test_train_says_how_long_the_chosen_settings_take_on_this_set():
    at = train_page()

    def expected() -> str:
        return next(c.value for c in at.caption if c.value.startswith("Expected with these settings"))
    default = expected()
    set_train_params(at, epochs=2000)
    at.run()
    assert expected() != default and expected().endswith("h on this set.")
    at.number_input(key="train.budget").set_value(1.0).run()  # the budget caps it
    assert expected() == "Expected with these settings: about 1 min on this set."


def test_train_settings_survive_a_visit_to_another_page():
    at = train_page()
    set_train_params(at, epochs=7, image_size=48)
    at.slider(key="train.holdout").set_value(0.3)
    at.number_input(key="train.budget").set_value(1.5)
    at.multiselect(key="train.autoencoder.aug.names").set_value(["color_jitter", "cutpaste_scar"]).run()
    at.switch_page("app_pages/data.py").run()
    at.switch_page("app_pages/train.py").run()
    assert at.number_input(key="train.autoencoder.param.epochs").value == 7
    assert at.slider(key="train.autoencoder.param.image_size").value == 48
    assert at.slider(key="train.holdout").value == pytest.approx(0.3)
    assert at.number_input(key="train.budget").value == pytest.approx(1.5)
    assert at.multiselect(key="train.autoencoder.aug.names").value == ["color_jitter", "cutpaste_scar"]


def test_train_shows_progress_queue_and_cancels(tiny_set):
    at = train_page(tiny_set)
    set_train_params(at, epochs=2000, **TINY)
    at.button(key="train.start").click().run()
    first = at.session_state["train.job_id"]
    at.button(key="train.start").click().run()  # a second job waits for the first
    second = at.session_state["train.job_id"]

    poll(at, lambda at: metric(at, "Loss") != "–", "a training loss")
    progress = at.get("progress")
    assert progress and progress[0].proto.text.startswith("training: step")
    assert metric(at, "Epoch").endswith("/ 2000")
    assert at.get("plotly_chart"), "the live loss curve"
    assert "Queued (1)" in texts(at) and f"2. Convolutional autoencoder · job `{second}`" in texts(at)

    at.button(key=f"train.remove.{second}").click().run()
    at.button(key=f"train.cancel.{first}").click().run()
    poll(at, lambda at: not at.get("progress"), "the job to stop")
    manager = common.job_manager()
    assert manager.get(first).status == CANCELLED and manager.get(second).status == CANCELLED
    assert "Nothing was saved" in at.warning[0].value
    assert "No runs yet" in texts(at)


@pytest.mark.slow
def test_the_auto_selection_table_is_full_width_below_the_job_panel(tiny_set):
    at = train_page(tiny_set, method="auto")
    for name, value in {"image_size": 64, "search_images": 12, "batch_size": 8}.items():
        key = f"train.auto.param.{name}"
        next(w for kind in ("slider", "number_input") for w in getattr(at, kind) if w.key == key).set_value(value)
    at.button(key="train.start").click().run()
    poll(at, lambda at: at.success, "the auto job to finish", timeout=300)
    assert "Finished in" in at.success[0].value
    title = "**How the method configured itself**"
    assert title in [m.value for m in at.markdown], texts(at)
    # Outside the form and job columns, so that all of the table's columns fit.
    assert all(title not in [m.value for m in column.markdown] for column in at.columns)
    candidates = next(d.value for d in at.dataframe if "candidate" in d.value.columns)
    assert len(candidates) >= 2 and len(candidates.columns) >= 6, "the whole table, every column"


def test_train_finishes_and_lists_the_run(tiny_set):
    at = train_page(tiny_set)
    set_train_params(at, epochs=1, **TINY)
    at.text_input(key="train.name").set_value("tiny")
    at.button(key="train.start").click().run()
    poll(at, lambda at: at.success, "the job to finish")
    job = common.job_manager().get(at.session_state["train.job_id"])
    assert job.status == FINISHED
    run_id = job.run_dir.name
    assert run_id in at.success[0].value
    # One total, the run's, with each phase named beside it.
    config = common.run_configs(common.runs_root())[0][0][1]
    assert f"Finished in {viz.format_seconds(config['total_seconds'])}" in at.success[0].value
    assert re.search(r"loading \d+:\d\d · training \d+:\d\d · scoring \d+:\d\d · embedding map", texts(at))
    assert "Explore page" not in texts(at)
    assert at.session_state["selected_run"] == run_id
    assert float(metric(at, "Image AUROC")) >= 0  # the demo set has labelled test images
    runs = at.dataframe[0].value
    assert list(runs["run id"]) == [run_id] and list(runs["name"]) == ["tiny"]
    assert runs["image AUROC"][0] == pytest.approx(float(metric(at, "Image AUROC")), abs=1e-3)


def test_student_teacher_picks_its_teacher_from_the_runs_that_can_teach(tiny_set, runs_dir):
    from adcore.training import train_run

    teacher = train_run(TrainSpec(method="autoencoder", data=str(tiny_set.root), name="teacher", params=dict(TINY, epochs=1)), runs_dir)
    no_maps = train_run(TrainSpec(data=str(tiny_set.root), method="pretrained_gaussian", params={"image_size": 32}), runs_dir)
    at = app_at("app_pages/train.py", tiny_set)
    at.radio(key="train.method").set_value("student_teacher").run()
    picker = at.selectbox(key="train.student_teacher.param.teacher")
    assert picker.value == "efficientnet_lite0"
    labels = picker.options
    assert "efficientnet_lite0 (ImageNet, frozen)" in labels
    assert f"run {teacher.name} · Convolutional autoencoder · teacher" in labels
    assert not any(no_maps.name in label for label in labels)  # a pooled-feature Gaussian has no dense features

    picker.set_value(str(teacher)).run()
    at.button(key="train.start").click().run()
    job = common.job_manager().get(at.session_state["train.job_id"])
    assert job.spec.params["teacher"] == str(teacher)  # the choice reaches training as the run's folder
    job.cancel()


def test_a_failed_job_shows_its_error_and_traceback(tmp_path):
    at = app_at("app_pages/train.py")
    (tmp_path / "empty").mkdir()
    job = common.job_manager().submit(TrainSpec(method="autoencoder", data=str(tmp_path / "empty"), params=dict(TINY, epochs=1)))
    common.job_manager().wait(job, timeout=TIMEOUT_S)
    at.run()
    assert "found 0 usable normal training image(s)" in at.error[0].value
    assert at.expander[-1].label.startswith("Traceback")
    assert "Traceback (most recent call last)" in at.expander[-1].code[0].value


# --- helpers in adcore.viz ------------------------------------------------------------------------


def test_draw_outline_and_mask_ring():
    image = np.zeros((20, 20, 3), np.uint8)
    boxed = viz.draw_outline(image, [(5.0, 5.0), (10.0, 5.0), (10.0, 10.0), (5.0, 10.0)], width=1)
    red = np.all(boxed == viz.OUTLINE_COLOR, axis=-1)
    assert red[5, 5:10].all() and red[9, 5:10].all() and not red[7, 7] and not red[0].any()
    assert not image.any(), "the input is not modified"
    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    ring = viz.mask_ring(mask)
    assert not (ring & mask).any() and ring[7, 8:12].all() and ring.sum() == 16
    framed = viz.draw_mask_outline(image, mask, thickness=2)
    assert np.all(framed[mask] == 0) and np.all(framed[6, 8:12] == viz.OUTLINE_COLOR)


def test_augmentation_samples_outline_pasted_patches():
    images = [np.full((64, 48, 3), 120, np.uint8), np.full((64, 48, 3), 60, np.uint8)]
    images[0][::2] = 200  # texture, so a pasted patch changes pixels
    images[1][:, ::3] = 10
    samples = viz.augmentation_samples(images, [("cutpaste", {"patch_jitter": 0.0})], seed=1, display_size=128)
    assert len(samples) == 2
    for s in samples:
        assert s.original.shape == s.augmented.shape == (128, 96, 3)
        assert s.result.outline is not None
        assert np.all(s.augmented == viz.OUTLINE_COLOR, axis=-1).any()
    again = viz.augmentation_samples(images, [("cutpaste", {"patch_jitter": 0.0})], seed=1, display_size=128)
    assert np.array_equal(again[1].augmented, samples[1].augmented), "same seed, same samples"
    small = viz.augmentation_samples(images, [], seed=0, work_size=32, display_size=96)
    assert small[0].original.shape == (96, 96, 3) and np.array_equal(small[0].original, small[0].augmented)


def test_loss_curve_and_tables():
    fig = viz.loss_curve_figure([(1, 1.0), (2, 0.5), (3, 0.01)], total_steps=10)
    assert list(fig.data[0].x) == [1, 2, 3] and fig.layout.yaxis.type == "log"
    assert tuple(fig.layout.xaxis.range) == (0, 10)
    assert viz.loss_curve_figure([]).data[0].x == ()
    assert viz.format_seconds(75.2) == "1:15" and viz.format_seconds(3725) == "1:02:05"
    assert viz.format_seconds(None) == "–"
    row = viz.run_row({"method": "autoencoder", "created": "2026-01-02T03:04:05+00:00", "metrics": {}}, "r1")
    assert row["created"] == "2026-01-02 03:04:05+00:00" and row["image AUROC"] is None and row["run id"] == "r1"


def _png(seed: int = 0, mask: bool = False, spot: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if mask:
        array = np.zeros((32, 32), np.uint8)
        array[8:16, 8:16] = 255
    else:
        array = rng.integers(60, 120, (32, 32, 3), dtype=np.uint8)
        if spot:
            array[8:16, 8:16] = 250
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_uploads_are_kept_beside_the_runs_folder_or_where_adcore_data_dir_says(tmp_path, monkeypatch):
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "store" / "runs"))
    monkeypatch.delenv("ADCORE_DATA_DIR", raising=False)
    assert common.default_data_dir() == (tmp_path / "store" / "data").resolve()
    monkeypatch.setenv("ADCORE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert common.default_data_dir() == (tmp_path / "elsewhere").resolve()
