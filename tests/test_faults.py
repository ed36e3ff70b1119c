"""Fault injection: every fault is made inside the test (a full disk, a killed process, damaged or
newer run folders, folders deleted under a job or a page, hostile names and paths), and each test
says what the user sees. Nothing here needs a GPU, the network or /work/shared."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from adcore.cli import main as cli_main
from adcore.data import open_image_set, save_uploads
from adcore.export import export_run
from adcore.loaded_model import load_model_bytes
from adcore.jobs import FAILED, FINISHED, JobManager
from adcore.methods import get_method_class
from adcore.runs import FORMAT_VERSION, list_runs, load_run, update_config, write_run
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec, texts

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
TINY = {"image_size": 32, "epochs": 1, "width": 8, "batch_size": 4}
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny MVTec-layout set and one run trained on it, shared (read-only) by the tests."""
    root = tmp_path_factory.mktemp("faults")
    data = make_tiny_mvtec(root / "set", n_train=8, n_test_good=2, n_defect=2, size=32)
    run = train_run(TrainSpec(method="autoencoder", data=str(data), params=TINY, name="tiny"), root / "runs")
    return {"data": data, "run": run}


def copy_run(tiny, root: Path, name: str | None = None) -> Path:
    """A private copy of the tiny run under ``root`` (a test may damage it)."""
    return Path(shutil.copytree(tiny["run"], root / (name or tiny["run"].name)))


def full_disk(monkeypatch, folder: Path, room: int = 64) -> None:
    """From now on, every file opened for writing under ``folder`` takes ``room`` bytes and then
    fails with ENOSPC, as on a full disk (Python-level writes: json, numpy, csv, our own files)."""
    real_open = builtins.open
    folder = folder.resolve()

    class Full:
        def __init__(self, fh, name):
            self._fh, self._name, self._left = fh, name, room

        def write(self, data):
            if len(data) > self._left:
                self._fh.write(data[: self._left])
                self._left = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._name))
            self._left -= len(data)
            return self._fh.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __iter__(self):
            return iter(self._fh)

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wxa+")
        if writing and isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(folder):
            return Full(fh, file)
        return fh

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


# --- writing runs: killed, or out of disk --------------------------------------------------------


KILL_DURING_WRITE_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from adcore.runs import load_run, write_run

    source = load_run(sys.argv[1])
    real = np.savez_compressed

    def killed_midway(file, **arrays):  # half the results written, then the process dies
        with open(file, "wb") as fh:
            fh.write(b"PK\\x03\\x04" + b"\\0" * 1000)
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    np.savez_compressed = killed_midway
    write_run(sys.argv[2], "killed-run", config=dict(source.config), method=source.load_method(),
              history=source.history, results=source.results)
    """
)


def test_a_process_killed_during_write_run_leaves_no_run_that_looks_complete(tiny, tmp_path):
    root = tmp_path / "runs"
    earlier = copy_run(tiny, root)
    done = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE_RUN, str(tiny["run"]), str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (root / "killed-run").exists(), "the run folder never appears half-written"
    runs, broken = list_runs(root)
    assert [r.path for r in runs] == [earlier] and broken == []  # the leftover is hidden, not "broken"
    # The same run id can be written afterwards: the leftover is replaced.
    source = load_run(earlier)
    path = write_run(root, "killed-run", config=dict(source.config), method=source.load_method(),
                     history=source.history, results=source.results)  # fmt: skip
    assert load_run(path).results["score"].shape == source.results["score"].shape


def test_a_full_disk_while_a_job_writes_its_run_fails_the_job_clearly(tiny, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    earlier = copy_run(tiny, root)
    before = {p: p.read_bytes() for p in earlier.iterdir()}
    manager = JobManager(root)
    full_disk(monkeypatch, root)
    job = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny["data"]), params=TINY)), timeout=TIMEOUT_S)
    monkeypatch.undo()
    assert job.status == FAILED
    assert job.error.startswith("The disk is full: no space left to write"), job.error
    assert sorted(p.name for p in root.iterdir()) == [earlier.name], "no half-written run, hidden or not"
    assert {p: p.read_bytes() for p in earlier.iterdir()} == before, "the earlier run is untouched"
    # The worker survives and the next job (disk freed) finishes.
    assert manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny["data"]), params=TINY)), timeout=TIMEOUT_S).status == FINISHED


def test_a_full_disk_while_exporting_keeps_the_earlier_file_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "model.adcore"
    export_run(tiny["run"], out)
    before = out.read_bytes()
    full_disk(monkeypatch, out.parent)
    code = cli_main(["export", "--run", str(tiny["run"]), "--out", str(out), "--force"])
    monkeypatch.undo()
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full: no space left to write") and "Traceback" not in err
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["model.adcore"]


def test_a_failing_report_leaves_no_half_written_file(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text("the earlier report")
    full_disk(monkeypatch, out.parent, room=1000)
    code = cli_main(["report", "--run", str(tiny["run"]), "--out", str(out), "--no-map", "--top", "1"])
    monkeypatch.undo()
    assert code == 1 and "the disk is full" in capsys.readouterr().err
    assert out.read_text() == "the earlier report"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"], "no temporary file left"


# --- long jobs keep what they did -----------------------------------------------------------------


def count_batches(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """The autoencoder's predict counts its batches (the sizes go into the returned list), and raises
    KeyboardInterrupt on batch ``interrupt_at`` (1-based), as Ctrl-C would."""
    method_class = get_method_class("autoencoder")
    real_predict = method_class.predict
    sizes: list[int] = []

    def counted(self, images, batch_size=32):
        sizes.append(len(images))
        if len(sizes) == interrupt_at:
            raise KeyboardInterrupt
        return real_predict(self, images, batch_size=batch_size)

    monkeypatch.setattr(method_class, "predict", counted)
    return sizes


def test_an_interrupted_score_keeps_the_rows_it_scored(tiny, tmp_path, monkeypatch, capsys):
    count_batches(monkeypatch, interrupt_at=3)
    out = tmp_path / "scores.csv"
    code = cli_main(["score", "--run", str(tiny["run"]), "--images", str(tiny["data"] / "train"), "--out", str(out),
                     "--batch-size", "3", "--device", "cpu"])  # fmt: skip
    assert code == 130
    err = capsys.readouterr().err
    assert f"stopped after 6 image(s): their rows are in {out}.part" in err
    assert not out.exists(), "an unfinished CSV never takes the final name"
    lines = (tmp_path / "scores.csv.part").read_text().splitlines()
    assert lines[0] == "path,score,decision,split,label" or lines[0] == "path,score,decision"
    assert len(lines) == 1 + 6 and all(line.count(",") == lines[0].count(",") for line in lines)


def test_an_interrupted_score_started_again_goes_on_and_writes_each_row_once(tiny, tmp_path, monkeypatch, capsys):
    args = ["--run", str(tiny["run"]), "--images", str(tiny["data"] / "train"), "--batch-size", "3", "--device", "cpu"]
    clean = tmp_path / "clean.csv"
    assert cli_main(["score", *args, "--out", str(clean)]) == 0
    out = tmp_path / "scores.csv"
    count_batches(monkeypatch, interrupt_at=3)
    assert cli_main(["score", *args, "--out", str(out)]) == 130
    monkeypatch.undo()
    scored_again = count_batches(monkeypatch)
    capsys.readouterr()
    assert cli_main(["score", *args, "--out", str(out)]) == 0
    assert sum(scored_again) == len(list((tiny["data"] / "train").rglob("*.png"))) - 6  # only what was left
    assert out.read_bytes() == clean.read_bytes()
    assert not Path(f"{out}.part").exists() and not Path(f"{out}.part.log").exists()
    assert "(6 of them by an earlier, interrupted run)" in capsys.readouterr().out


# --- broken run folders ----------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda run: truncate(run / "results.npz"), "is unreadable"),
        (lambda run: truncate(run / "state.safetensors"), "state.safetensors is damaged or truncated"),
        (lambda run: update_config(run, format=FORMAT_VERSION + 1), "was written by a newer adcore"),
    ],
    ids=["results truncated", "weights truncated", "newer format"],
)
def test_a_damaged_or_newer_run_is_listed_as_broken_with_its_reason(tiny, tmp_path, damage, reason):
    root = tmp_path / "runs"
    good = copy_run(tiny, root, "good")
    bad = copy_run(tiny, root, "bad")
    damage(bad)
    runs, broken = list_runs(root)
    assert [r.path for r in runs] == [good]
    assert [name for name, _ in broken] == ["bad"] and reason in broken[0][1], broken


def test_a_weights_file_whose_header_claims_a_huge_tensor_is_refused_before_allocating(tiny, tmp_path):
    huge = {"w": {"dtype": "F32", "shape": [100_000, 100_000, 100], "data_offsets": [0, 4 * 10**12]}}
    header = json.dumps({"__metadata__": {"adcore.format": "adcore-model"}, **huge}).encode()
    header += b" " * (-len(header) % 8)
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 64
    with pytest.raises(ValueError, match="truncated"):  # 4 TB described, 64 bytes there: never read
        load_model_bytes(blob, "huge.adcore", device="cpu")
    # The same claim in a run folder's weights: listed as broken, not loaded.
    root = tmp_path / "runs"
    run = copy_run(tiny, root, "huge")
    (run / "state.safetensors").write_bytes(blob)
    runs, broken = list_runs(root)
    assert runs == [] and "state.safetensors is damaged or truncated" in broken[0][1]


# --- jobs --------------------------------------------------------------------------------------------


def test_an_image_set_deleted_while_its_job_trains_fails_the_job_and_the_worker_survives(tiny, tmp_path, monkeypatch):
    data = Path(shutil.copytree(tiny["data"], tmp_path / "set"))
    method_class = get_method_class("autoencoder")
    real_fit = method_class.fit

    def fit_then_the_folder_goes(self, images, ctx):
        fitted = real_fit(self, images, ctx)
        shutil.rmtree(data)  # someone deletes the set while the model trains
        return fitted

    monkeypatch.setattr(method_class, "fit", fit_then_the_folder_goes)
    manager = JobManager(tmp_path / "runs")
    job = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(data), params=TINY)), timeout=TIMEOUT_S)
    assert job.status == FAILED
    assert f"The image set folder {data} was deleted or moved while the model trained" in job.error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    monkeypatch.undo()
    # Started from a page that opened the set before it went: a message, not a run of zero images.
    opened = open_image_set(shutil.copytree(tiny["data"], tmp_path / "set2"))
    shutil.rmtree(tmp_path / "set2")
    gone = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(opened.root), params=TINY), image_set=opened), timeout=TIMEOUT_S)
    assert gone.status == FAILED and "is gone (deleted or moved)" in gone.error, gone.error
    ok = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny["data"]), params=TINY)), timeout=TIMEOUT_S)
    assert ok.status == FINISHED, ok.error


def test_two_sessions_starting_jobs_at_once_are_queued_and_both_finish(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "runs"))
    st.cache_resource.clear()
    image_set = open_image_set(tiny["data"])
    sessions = []
    for _ in range(2):
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
        at.session_state["image_set"] = image_set
        at.run()
        at.switch_page("app_pages/train.py").run()
        for name, value in TINY.items():
            key = f"train.autoencoder.param.{name}"
            widget = next((w for kind in ("slider", "number_input") for w in getattr(at, kind) if w.key == key), None)
            if widget is not None:
                widget.set_value(value)
        sessions.append(at)
    for at in sessions:  # one click each, one right after the other
        at.button(key="train.start").click().run()
        assert not at.exception, [e.value for e in at.exception]
    from app_pages import common

    manager = common.job_manager()
    jobs = [manager.get(at.session_state["train.job_id"]) for at in sessions]
    assert jobs[0].id != jobs[1].id
    for job in jobs:
        manager.wait(job, timeout=TIMEOUT_S)
    assert [job.status for job in jobs] == [FINISHED, FINISHED], [job.error for job in jobs]
    assert jobs[1].started >= jobs[0].ended, "one at a time: the second was queued"
    assert len(list_runs(tmp_path / "runs")[0]) == 2
    st.cache_resource.clear()


def test_two_jobs_submitted_at_the_same_instant_from_two_threads_both_finish(tiny, tmp_path):
    import threading

    manager = JobManager(tmp_path / "runs")
    start, jobs = threading.Barrier(2), []

    def submit() -> None:
        start.wait()  # both threads call submit together, as two sessions' button clicks can
        jobs.append(manager.submit(TrainSpec(method="autoencoder", data=str(tiny["data"]), params=TINY)))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job in jobs:
        manager.wait(job, timeout=TIMEOUT_S)
    assert [job.status for job in jobs] == [FINISHED, FINISHED], [job.error for job in jobs]
    first, second = sorted(jobs, key=lambda j: j.started)
    assert second.started >= first.ended, "one at a time"
    assert len({job.run_dir for job in jobs}) == 2 and len(list_runs(tmp_path / "runs")[0]) == 2


# --- what a visitor can reach on the server -------------------------------------------------------


def test_server_folders_open_only_under_the_allowed_roots(tmp_path, monkeypatch):
    from adcore.data import allowed_data_roots, allowed_path

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "set").mkdir(parents=True)
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    monkeypatch.setenv("ADCORE_DATA_ROOTS", f"{allowed}{os.pathsep}{tmp_path / 'other'}")
    roots = allowed_data_roots(["/ignored/when/the/variable/is/set"])
    assert roots == [allowed.resolve(), (tmp_path / "other").resolve()]
    assert allowed_path(allowed / "set", roots) == (allowed / "set").resolve()
    assert allowed_path(f"{allowed}/set/../set", roots) == (allowed / "set").resolve()
    for sneaky in (outside, allowed / "link", f"{allowed}/../outside", "/etc", allowed / "link" / "x"):
        with pytest.raises(ValueError, match="outside the folders this server opens") as refused:
            allowed_path(sneaky, roots)
        assert str(allowed.resolve()) in str(refused.value) and "ADCORE_DATA_ROOTS" in str(refused.value)
    monkeypatch.delenv("ADCORE_DATA_ROOTS")
    assert allowed_data_roots([tmp_path / "data", tmp_path / "sample_data"]) == [
        (tmp_path / "data").resolve(), (tmp_path / "sample_data").resolve(),
    ]  # fmt: skip


def test_the_data_page_refuses_a_folder_outside_the_allowed_roots(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ADCORE_DATA_ROOTS", str(tmp_path / "allowed"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page("app_pages/data.py").run()
    assert str((tmp_path / "allowed").resolve()) in texts(at), "the page says which folders it opens"
    at.text_input(key="data.folder").set_value(str(tiny["data"])).run()
    at.button(key="data.open_folder").click().run()
    assert not at.exception
    assert "outside the folders this server opens" in at.error[0].value
    assert at.session_state["image_set"].root != tiny["data"], "the current set is kept"


def test_upload_names_never_place_a_file_outside_the_upload_folder(tmp_path):
    dest = tmp_path / "uploads" / "new"
    dest.parent.mkdir()
    (dest.parent / "sibling").mkdir()
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(png, format="PNG")
    hostile = [
        "../escape.png", "../../escape.png", "/etc/escape.png", "C:\\..\\..\\escape.png", "..\\..\\escape.png",
        "a/../../escape.png", "....//....//escape.png", "./../sibling/escape.png", "\x00../escape.png",
        "%2e%2e/escape.png", "sub/../../../escape.png", "ok.png",
    ]  # fmt: skip
    image_set = save_uploads([(name, png.getvalue()) for name in hostile], dest)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.resolve().is_relative_to(dest.resolve()) for p in written), written
    assert not (dest.parent / "sibling" / "escape.png").exists()
    # Each one is kept under a safe name inside the folder, or listed with its reason.
    assert len(image_set.normal_train) + len(image_set.skipped) == len(hostile)
    # Defence in depth: a link already inside the upload folder does not lead a write outside it.
    dest2 = tmp_path / "uploads" / "linked"
    dest2.mkdir()
    (dest2 / "link").symlink_to(dest.parent / "sibling")
    image_set = save_uploads([("link/escape.png", png.getvalue())], dest2)
    assert not (dest.parent / "sibling" / "escape.png").exists()
    assert [(s.rel_path, s.reason) for s in image_set.skipped] == [("link/escape.png", "unsafe file name")]


# --- pages: a run folder deleted under them, a working set whose folder vanished -----------------

ALL_PAGES = (
    "app_pages/home.py", "app_pages/data.py", "app_pages/augmentations.py", "app_pages/train.py",
    "app_pages/embeddings.py", "app_pages/scores.py", "app_pages/inspect.py", "app_pages/compare.py",
)  # fmt: skip


def page_at(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def two_runs(tiny, tmp_path, monkeypatch):
    """A runs folder of two copies of the tiny run, "kept" and "doomed" (the newer, picked first)."""
    root = tmp_path / "runs"
    kept = copy_run(tiny, root, "20260101-000000-autoencoder-kept00")
    doomed = copy_run(tiny, root, "20260102-000000-autoencoder-doomed")
    update_config(kept, created="2026-01-01T00:00:00+00:00", name="kept")
    update_config(doomed, created="2026-01-02T00:00:00+00:00", name="doomed")
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(root))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield {"root": root, "kept": kept, "doomed": doomed}
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_survives_the_open_run_folder_being_deleted(two_runs, page):
    at = page_at(page, selected_run=two_runs["doomed"].name)
    shutil.rmtree(two_runs["doomed"])
    at.run()  # the next interaction, with the folder gone
    assert not at.exception, [e.value for e in at.exception]
    if page in ALL_PAGES[4:7]:  # the Explore pages say what happened and show the run that is left
        assert f"{two_runs['doomed'].name}` you were looking at is no longer in the runs folder" in texts(at)
        assert at.session_state["selected_run"] == two_runs["kept"].name
    shutil.rmtree(two_runs["kept"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page in ALL_PAGES[4:]:
        assert "no trained model to explore yet" in texts(at)


@pytest.mark.parametrize("page", ALL_PAGES[4:])
@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda run: truncate(run / "results.npz"), "is unreadable"),
        (lambda run: truncate(run / "state.safetensors"), "is unreadable: state.safetensors is damaged or truncated"),
        (lambda run: update_config(run, format=FORMAT_VERSION + 1), "was written by a newer adcore"),
    ],
    ids=["results truncated", "weights truncated", "newer format"],
)
def test_the_explore_pages_list_a_damaged_run_with_its_reason(two_runs, page, damage, reason):
    damage(two_runs["doomed"])
    at = page_at(page, selected_run=two_runs["doomed"].name)
    assert f"`{two_runs['doomed'].name}`: run {two_runs['doomed'].name} {reason}" in texts(at)
    assert at.expander[0].label == "1 folder(s) in the runs folder are not readable runs"


@pytest.mark.parametrize("page", ALL_PAGES[4:])
def test_a_run_deleted_just_after_the_runs_were_listed_shows_guidance(two_runs, page, monkeypatch):
    from app_pages import common

    listed = common.runs_table(two_runs["root"])  # the list a moment before the folder goes
    at = page_at(page, selected_run=two_runs["doomed"].name)
    shutil.rmtree(two_runs["doomed"])
    monkeypatch.setattr(common, "runs_table", lambda root: listed)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    gone = f"run {two_runs['doomed'].name} is gone: its folder was deleted or moved."
    if page == "app_pages/compare.py":
        assert f"Run `{two_runs['doomed'].name}` is left out: {gone}" in texts(at)
    else:
        assert f"The run `{two_runs['doomed'].name}` cannot be read any more: {gone}" in texts(at)


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_page_guides_when_the_working_set_folder_has_vanished(tiny, tmp_path, monkeypatch, page):
    monkeypatch.setenv("ADCORE_RUNS_DIR", str(tmp_path / "runs"))
    copy_run(tiny, tmp_path / "runs")
    st.cache_resource.clear()
    folder = Path(shutil.copytree(tiny["data"], tmp_path / "my set"))
    image_set = open_image_set(folder)
    shutil.rmtree(folder)
    at = page_at(page, image_set=image_set)
    if page in ALL_PAGES[:4]:  # the pages that work on the set
        assert "The folder of the image set you were working on, my set, is gone" in texts(at)
        assert at.session_state["image_set"].root != image_set.root, "back on the demo set"
    st.cache_resource.clear()


# --- the Scores page: a saved threshold on another score, saving on a full disk ------------------


def test_the_scores_page_says_a_threshold_saved_for_another_score_is_not_used(two_runs):
    run_id = two_runs["kept"].name
    value = float(np.median(load_run(two_runs["kept"]).results["score"]))
    update_config(two_runs["kept"], threshold={"value": value, "how": "by hand", "details": {}}, scorer=None)
    at = page_at("app_pages/scores.py", selected_run=run_id)
    at.selectbox(key=f"scores.{run_id}.scorer").set_value("knn").run()
    assert not at.exception, [e.value for e in at.exception]
    note = f"saved threshold {value:.4g} was chosen for the method's own score, not for the knn scorer"
    assert note in texts(at)
    assert at.session_state["explore.threshold"][run_id]["threshold"]["value"] != value, "not used on knn scores"


def test_saving_a_threshold_on_a_full_disk_says_so_and_keeps_the_saved_one(two_runs, monkeypatch):
    run_id = two_runs["kept"].name
    before = (two_runs["kept"] / "config.json").read_bytes()
    at = page_at("app_pages/scores.py", selected_run=run_id)
    full_disk(monkeypatch, two_runs["kept"])
    at.button(key=f"scores.{run_id}.method.save").click().run()
    monkeypatch.undo()
    assert not at.exception, [e.value for e in at.exception]
    assert "The threshold could not be saved: the disk is full" in at.error[0].value
    assert (two_runs["kept"] / "config.json").read_bytes() == before
    assert sorted(p.name for p in two_runs["kept"].iterdir()) == sorted(
        ["config.json", "history.json", "results.npz", "state.safetensors"] + [
            p.name for p in two_runs["kept"].iterdir() if p.name.endswith(".npy") or p.is_dir()
        ]
    )  # fmt: skip


def test_a_full_disk_while_train_writes_its_run_leaves_nothing_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "new"
    full_disk(monkeypatch, tmp_path / "runs")
    code = cli_main(["train", "--method", "autoencoder", "--data", str(tiny["data"]), "--out", str(out)] + [f"--param={k}={v}" for k, v in TINY.items()])
    monkeypatch.undo()
    assert code == 1
    err = capsys.readouterr().err
    assert "error: the disk is full: no space left to write" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == [], "no run, no scratch folder"
    # Space again: the same --out trains.
    assert cli_main(["train", "--method", "autoencoder", "--data", str(tiny["data"]), "--out", str(out)] + [f"--param={k}={v}" for k, v in TINY.items()]) == 0
    assert load_run(out).results["score"].size


def test_a_full_disk_while_bench_saves_still_shows_the_measured_rows(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results" / "r.json"
    out.parent.mkdir()
    full_disk(monkeypatch, out.parent)
    code = cli_main(["bench", "--data", str(tiny["data"]), "--methods", "autoencoder", "--scorers", "own",
                     "--image-size", "32", "--param", "autoencoder.epochs=1", "--param", "autoencoder.width=8",
                     "--out", str(out)])  # fmt: skip
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 1 and "error: the disk is full" in captured.err
    assert "autoencoder | own" in captured.out, "the numbers were printed before the disk said no"
    assert list(out.parent.iterdir()) == []
