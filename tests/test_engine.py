"""The training engine: method registry, parameters, background jobs, run store, CLI train/score."""

from __future__ import annotations

import csv
import json
import threading
import time

import numpy as np
import pytest

from adcore.cli import main as cli_main
from adcore.jobs import CANCELLED, FAILED, FINISHED, JobManager
from adcore.methods import DEFAULT_METHOD, Cancelled, FitContext, build_method, get_method_class, list_methods
from adcore.methods.autoencoder import Autoencoder
from adcore.methods.base import snapshot_epochs
from adcore.runs import list_runs, load_run
from adcore.training import TrainSpec, split_holdout, train_run
from tests.helpers import make_tiny_mvtec, textured

TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}


@pytest.fixture()
def tiny_set(tmp_path):
    return make_tiny_mvtec(tmp_path / "set")


def test_registry_lists_default_and_rejects_unknown_names():
    assert DEFAULT_METHOD in [cls.name for cls in list_methods()]
    assert DEFAULT_METHOD == "auto"  # the self-configuring PatchCore; tests/test_auto.py covers it
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known: .*autoencoder"):
        get_method_class("nope")


def test_every_method_declares_typed_params_with_help():
    for cls in list_methods():
        specs = cls.param_specs()
        assert {"image_size", "seed"} <= {p.name for p in specs}
        for p in specs:
            assert p.help, f"{cls.name}.{p.name} has no help"
            assert p.validate(p.default) == p.default


@pytest.mark.parametrize(
    "params, message",
    [
        ({"epochs": 0}, r"epochs: 0 is below the minimum 1"),
        ({"loss": "l7"}, r"loss: 'l7' is not one of \['mse', 'mse\+ssim'\]"),
        ({"learning_rate": "fast"}, r"learning_rate: expected float, got str"),
        ({"colour": 3}, r"unknown parameter\(s\) \['colour'\]"),
    ],
)
def test_bad_parameters_fail_with_a_clear_message(params, message):
    with pytest.raises(ValueError, match=message):
        build_method("autoencoder", **params)


def test_constructor_does_no_work_and_stores_params():
    method = Autoencoder(epochs=0)  # invalid, but __init__ only stores
    assert method.params == {"epochs": 0}
    assert not hasattr(method, "net_")


def test_snapshot_epochs_are_spread_and_include_the_last():
    assert snapshot_epochs(40, 6) == {7, 13, 20, 27, 33, 40}
    assert snapshot_epochs(2, 6) == {1, 2}
    assert snapshot_epochs(0, 6) == set()


def test_holdout_split_is_disjoint_deterministic_and_keeps_two_for_fitting():
    fit, hold = split_holdout(10, 0.2, seed=3)
    assert len(hold) == 2 and len(fit) == 8 and not set(fit) & set(hold)
    assert np.array_equal(split_holdout(10, 0.2, seed=3)[1], hold)
    fit, hold = split_holdout(3, 0.9, seed=0)
    assert len(fit) == 2 and len(hold) == 1


def test_train_run_writes_a_complete_run(tiny_set, tmp_path):
    events = []
    run_dir = train_run(
        TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY), tmp_path / "runs", on_progress=events.append
    )
    run = load_run(run_dir)
    assert run.config["method"] == "autoencoder" and run.config["params"]["epochs"] == 2
    assert run.config["data"]["n_fit"] + run.config["data"]["n_holdout"] == 10
    roles = list(run.results["role"])
    assert roles.count("test") == 6 and roles.count("holdout") == 2
    assert roles.count("synthetic") == 4  # cutpaste and scar on each hold-out image
    assert run.results["score"].shape == (len(roles),)
    assert run.results["anomaly_map"].shape[0] == len(roles)
    assert run.results["embedding"].shape[0] == len(roles)
    assert {e["phase"] for e in events} >= {"loading images", "training", "scoring", "mapping embeddings", "saving"}
    # Each phase by name; their sum is the run's one total.
    phases = run.config["phase_seconds"]
    assert set(phases) == {"loading", "training", "scoring", "mapping"}
    assert phases["training"] == run.config["train_seconds"]
    assert run.config["total_seconds"] == pytest.approx(sum(phases.values()), abs=0.05)
    # The Embeddings page's first map is stored with the run.
    assert run.results["default_map"].shape == (len(roles), 2)
    losses = [h for h in run.history if h["phase"] == "training"]
    assert losses and all(h["loss"] is not None for h in losses)
    # Hold-out normals and synthetic defects scored after each of the two epochs, for the Scores page.
    snapshots = [h for h in run.history if h["phase"] == "epoch scores"]
    assert [h["epoch"] for h in snapshots] == [1, 2]
    assert {g: len(v) for g, v in snapshots[-1]["scores"].items()} == {
        "hold-out normal": 2, "synthetic cutpaste": 2, "synthetic cutpaste scar": 2
    }
    assert set(run.config["metrics"]) == {
        "image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_pro", "hit_rate", "hit_rate_images"
    }
    assert not any(p.name.startswith(".") for p in (tmp_path / "runs").iterdir())


def test_same_seed_gives_same_scores_and_save_load_round_trips(tiny_set, tmp_path):
    a = load_run(train_run(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY), tmp_path / "runs"))
    b = load_run(train_run(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY), tmp_path / "runs"))
    np.testing.assert_array_equal(a.results["score"], b.results["score"])

    method = a.load_method()
    images = [textured(np.random.default_rng(i)) for i in range(5)]
    again = a.load_method().score(images)
    np.testing.assert_array_equal(method.score(images), again)
    # The stored test scores are what the reloaded method computes in a fresh object.
    from adcore.data import load_image, open_image_set

    test = open_image_set(tiny_set).test
    stored = a.results["score"][a.results["role"] == "test"]
    np.testing.assert_allclose(method.score([load_image(r.path) for r in test]), stored, rtol=1e-5)


def test_fit_reports_progress_and_stops_on_request():
    images = [textured(np.random.default_rng(i)) for i in range(8)]
    stop = threading.Event()
    seen = []

    def on_progress(event):
        seen.append(event)
        stop.set()  # ask to stop after the first report

    ctx = FitContext(on_progress=on_progress, stop_event=stop)
    with pytest.raises(Cancelled):
        Autoencoder(**{**TINY, "epochs": 500}).fit(images, ctx)
    assert len(seen) == 1


def test_budget_stops_training_cleanly():
    images = [textured(np.random.default_rng(i)) for i in range(8)]
    ctx = FitContext(budget_s=0.5)
    t0 = time.monotonic()
    method = Autoencoder(**{**TINY, "epochs": 2000}).fit(images, ctx)
    assert time.monotonic() - t0 < 20
    assert method.score(images).shape == (8,)


def test_job_finishes_and_lists_its_run(tiny_set, tmp_path):
    manager = JobManager(tmp_path / "runs")
    job = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY))
    manager.wait(job, timeout=120)
    assert job.status == FINISHED, job.error
    assert job.run_dir is not None and job.run_dir.parent == tmp_path / "runs"
    assert job.progress.losses and job.device.startswith("cpu")
    runs, broken = list_runs(tmp_path / "runs")
    assert [r.path for r in runs] == [job.run_dir] and broken == []


def test_job_cancelled_midway_leaves_no_run_and_earlier_runs_intact(tiny_set, tmp_path):
    manager = JobManager(tmp_path / "runs")
    first = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY)), timeout=120)
    assert first.status == FINISHED
    job = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params={**TINY, "epochs": 2000}))
    deadline = time.monotonic() + 60
    while not job.progress.losses and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status == "running" and job.progress.losses
    t0 = time.monotonic()
    job.cancel()
    manager.wait(job, timeout=30)
    assert job.status == CANCELLED and time.monotonic() - t0 < 5
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.run_dir.name]


def test_jobs_run_one_at_a_time_and_queue_the_rest(tiny_set, tmp_path):
    manager = JobManager(tmp_path / "runs")
    a = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params={**TINY, "epochs": 2000}))
    b = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY))
    deadline = time.monotonic() + 60
    while a.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.status == "queued" and manager.queue_position(b) == 1
    a.cancel()
    manager.wait(b, timeout=120)
    assert a.status == CANCELLED and b.status == FINISHED


def test_removing_a_queued_job_ends_it_at_once_and_the_next_one_still_runs(tiny_set, tmp_path):
    manager = JobManager(tmp_path / "runs")
    a = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params={**TINY, "epochs": 2000}))
    b = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY))
    c = manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY))
    deadline = time.monotonic() + 60
    while a.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    b.cancel()
    # Ended now, not when the worker reaches it: it leaves the queue and c moves up.
    assert b.status == CANCELLED and b.started is None
    assert [j.id for j in manager.active()] == [a.id, c.id] and manager.queue_position(c) == 1
    a.cancel()
    manager.wait(c, timeout=120)
    assert (a.status, b.status, c.status) == (CANCELLED, CANCELLED, FINISHED)
    assert b.started is None and b.run_dir is None  # the removed job never ran


def test_job_whose_fit_raises_reports_the_error(tiny_set, tmp_path, monkeypatch):
    def broken_fit(self, images, ctx):
        raise RuntimeError("the network exploded")

    monkeypatch.setattr(Autoencoder, "_fit", broken_fit)
    manager = JobManager(tmp_path / "runs")
    job = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY)), timeout=60)
    assert job.status == FAILED
    assert "the network exploded" in job.error and "Traceback" in job.traceback
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # The worker survives a failure and runs the next job.
    monkeypatch.undo()
    assert manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY)), timeout=120).status == FINISHED


def test_out_of_memory_error_suggests_a_smaller_batch(tiny_set, tmp_path, monkeypatch):
    def oom(self, images, ctx):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Autoencoder, "_fit", oom)
    manager = JobManager(tmp_path / "runs")
    job = manager.wait(manager.submit(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY)), timeout=60)
    assert job.status == FAILED and "smaller batch_size or image_size" in job.error


def test_broken_run_folders_are_skipped_with_a_reason(tiny_set, tmp_path):
    root = tmp_path / "runs"
    good = train_run(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY), root)
    missing = root / "missing-state"
    missing.mkdir()
    for name in ("config.json", "history.json", "results.npz"):
        (missing / name).write_bytes((good / name).read_bytes())
    garbled = root / "garbled-config"
    garbled.mkdir()
    for name in ("state.safetensors", "history.json", "results.npz"):
        (garbled / name).write_bytes((good / name).read_bytes())
    (garbled / "config.json").write_text("{not json")
    (root / ".incomplete-x").mkdir()  # a crashed write: invisible

    runs, broken = list_runs(root)
    assert [r.path for r in runs] == [good]
    reasons = dict(broken)
    assert reasons["missing-state"] == "run missing-state is incomplete: missing state.safetensors"
    assert reasons["garbled-config"].startswith("run garbled-config is unreadable")


def test_cli_train_then_score_in_a_fresh_process(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "autoencoder", "--data", str(tiny_set), "--out", str(out), "--image-size", "32"]
    args += [f"--param={k}={v}" for k, v in TINY.items() if k != "image_size"]
    assert cli_main(args) == 0
    assert json.loads((out / "config.json").read_text())["params"]["image_size"] == 32
    (tiny_set / "test/good/broken.png").write_text("not an image")
    csv_path = tmp_path / "scores.csv"
    assert cli_main(["score", "--run", str(out), "--images", str(tiny_set / "test"), "--out", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 and {"path", "score"} <= set(rows[0])
    assert sorted(r["path"] for r in rows)[0] == "good/000.png"
    printed = capsys.readouterr().out
    assert "good/broken.png" in printed and "not an image" in printed


def test_cli_rejects_unknown_params_clearly(tiny_set, tmp_path, capsys):
    code = cli_main(["train", "--data", str(tiny_set), "--out", str(tmp_path / "r"), "--param", "depth=3"])
    assert code == 2
    assert "auto has no parameter 'depth'" in capsys.readouterr().err  # the default method names itself


def test_truncated_results_file_is_reported_not_crashing(tiny_set, tmp_path):
    root = tmp_path / "runs"
    good = train_run(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY), root)
    data = (good / "results.npz").read_bytes()
    (good / "results.npz").write_bytes(data[: len(data) // 2])
    runs, broken = list_runs(root)
    assert runs == [] and broken[0][0] == good.name and "unreadable" in broken[0][1]


def test_budget_flag_is_set_only_when_training_was_cut_short(tiny_set, tmp_path):
    full = load_run(train_run(TrainSpec(method="autoencoder", data=str(tiny_set), params=TINY, budget_s=600), tmp_path / "runs"))
    assert full.config["stopped_by_budget"] is False
    cut = TrainSpec(method="autoencoder", data=str(tiny_set), params={**TINY, "epochs": 2000}, budget_s=1.0)
    assert load_run(train_run(cut, tmp_path / "runs")).config["stopped_by_budget"] is True


@pytest.mark.parametrize("n, batch_size", [(1, 1), (1, 4), (2, 1), (5, 4), (6, 4), (8, 4), (9, 2), (700, 64)])
def test_steps_per_epoch_counts_the_batches_an_epoch_yields(n, batch_size):
    from adcore.methods.base import epoch_batches, steps_per_epoch

    batches = list(epoch_batches(n, batch_size, np.random.default_rng(0)))
    assert steps_per_epoch(n, batch_size) == len(batches)
    seen = [int(i) for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no image twice in an epoch
    if batch_size >= 2 and n % batch_size != 1:  # otherwise a lone image is left out of the epoch
        assert sorted(seen) == list(range(n))


def test_time_left_is_estimated_from_each_phase_s_own_rate(monkeypatch):
    from adcore import jobs

    clock = [1000.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    job = jobs.Job(spec=TrainSpec(method="autoencoder", data="unused"))
    job._on_progress({"phase": "training", "step": 0, "total_steps": 20, "elapsed_s": 0.0})
    clock[0] += 100
    job._on_progress({"phase": "training", "step": 10, "total_steps": 20, "images": 160, "elapsed_s": 100.0})
    assert job.progress.eta_s == pytest.approx(100.0) and job.progress.images_per_s == pytest.approx(1.6)
    # Scoring is much faster per step; the method's clock (elapsed_s) still counts from the fit's start.
    job._on_progress({"phase": "scoring", "step": 0, "total_steps": 100, "elapsed_s": 100.0})
    assert job.progress.eta_s is None
    clock[0] += 5
    job._on_progress({"phase": "scoring", "step": 50, "total_steps": 100, "images": 50, "elapsed_s": 205.0})
    assert job.progress.eta_s == pytest.approx(5.0) and job.progress.images_per_s == pytest.approx(10.0)
