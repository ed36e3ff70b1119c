"""`train --engine ray`: a Ray training job lands in the runs folder and scores, reports its progress,
raises its errors as they are, and stops when cancelled (from the caller or with Ctrl-C on the CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adcore.cli import main as cli_main
from adcore.methods import Cancelled
from adcore.runs import load_run
from adcore.training import TrainSpec
from tests.helpers import make_tiny_mvtec

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_mvtec(tmp_path_factory.mktemp("set") / "set")


@pytest.mark.slow  # a Ray worker starts and trains (~10 s)
def test_a_ray_training_job_lands_in_the_runs_folder_and_its_run_scores(ray_instance, data, tmp_path):
    from adcore.ray_training import train_on_ray

    events, engines = [], []
    run_dir = train_on_ray(TrainSpec(data=str(data), method="autoencoder", params=TINY), tmp_path / "runs",
                           on_progress=events.append, on_submitted=engines.append)
    assert run_dir.parent == tmp_path / "runs" and run_dir.is_dir()
    run = load_run(run_dir)
    assert run.config["method"] == "autoencoder" and len(run.results["score"]) == run.config["data"]["n_fit"] + \
        run.config["data"]["n_holdout"] + run.config["data"]["n_test"] + 2 * run.config["data"]["n_holdout"]
    assert engines == ["Ray, 2 CPU"]  # no GPU here: the CPUs of the (one) node
    phases = [e["phase"] for e in events]
    assert phases[0] == "waiting for Ray" and "decoding photos" in phases and "training" in phases
    out = tmp_path / "scores.csv"
    assert cli_main(["score", "--run", str(run_dir), "--images", str(data / "test"), "--out", str(out),
                     "--device", "cpu"]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 1 + 6  # header and the 6 test photos


@pytest.mark.slow
def test_an_error_in_the_ray_task_is_raised_as_itself(ray_instance, tmp_path):
    from adcore.ray_training import train_on_ray

    single = make_tiny_mvtec(tmp_path / "one", n_train=1)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        train_on_ray(TrainSpec(data=str(single), method="autoencoder", params=TINY), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_cancelled_ray_job_stops_and_frees_its_cpus(ray_instance, data, tmp_path):
    from adcore.ray_training import train_on_ray

    stop = threading.Event()

    def on_progress(event: dict) -> None:
        if event["phase"] == "training":
            stop.set()

    spec = TrainSpec(data=str(data), method="autoencoder", params={**TINY, "epochs": 2000})
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        train_on_ray(spec, tmp_path / "runs", on_progress=on_progress, stop_event=stop)
    assert time.monotonic() - t0 < 120  # far less than 2,000 epochs
    assert not (tmp_path / "runs").exists()
    # The task asked for both CPUs: a task that needs both again runs only if the cancelled one has ended.
    ray = ray_instance
    probe = ray.remote(num_cpus=2)(lambda: "ran").remote()
    ready, _ = ray.wait([probe], timeout=30)
    assert ready and ray.get(probe) == "ran"


@pytest.mark.slow  # a Python process starts its own Ray instance and is interrupted (~20-40 s)
def test_ctrl_c_on_the_cli_cancels_the_ray_job(data, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adcore", "train", "--engine", "ray", "--data", str(data), "--method", "autoencoder",
           "--param", "epochs=2000", "--param", "image_size=32", "--param", "width=8", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    seen = ""
    deadline = time.monotonic() + 180
    try:
        while "training" not in seen.replace("training on", "") and time.monotonic() < deadline:
            chunk = proc.stderr.read(64)
            if not chunk:
                break
            seen += chunk
        assert "training on Ray" in seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + err
    assert "the Ray task was stopped" in err
    assert not out.exists()


def test_ray_address_without_the_ray_engine_is_refused(data, tmp_path, capsys):
    code = cli_main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--ray-address", "auto"])
    assert code == 2 and "--ray-address goes with --engine ray" in capsys.readouterr().err


@pytest.mark.slow
def test_the_job_manager_runs_a_ray_job_and_says_where(ray_instance, data, tmp_path):
    from adcore.jobs import FINISHED, JobManager

    manager = JobManager(tmp_path / "runs")
    job = manager.wait(manager.submit(TrainSpec(data=str(data), method="autoencoder", params=TINY), engine="ray"),
                       timeout=300)
    assert job.status == FINISHED, job.error
    assert job.engine_detail == "Ray, 2 CPU" and job.run_dir.parent == tmp_path / "runs"
    assert load_run(job.run_dir).config["method"] == "autoencoder"
    assert job.progress.losses  # the task's training losses reached the job's progress


def test_the_job_manager_refuses_an_unknown_engine(tmp_path):
    from adcore.jobs import JobManager

    with pytest.raises(ValueError, match="unknown engine"):
        JobManager(tmp_path / "runs").submit(TrainSpec(data=str(tmp_path)), engine="dask")
