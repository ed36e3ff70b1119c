"""`score --engine ray`: the same CSV as the local engine, resumable after a kill, and a clear message without Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from adcore.batch import partial_path
from adcore.cli import main as cli_main
from adcore.ray_engine import worker_resources
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "sample_data" / "test"
TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder run, its exported model file, and the local engine's CSV of sample_data/test."""
    root = tmp_path_factory.mktemp("ray")
    run_dir = train_run(TrainSpec(method="autoencoder", data=str(make_tiny_mvtec(root / "set")), params=TINY), root / "runs")
    model = root / "model.adcore"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(model)]) == 0
    local = root / "local.csv"
    assert cli_main(["score", "--run", str(run_dir), "--images", str(IMAGES), "--out", str(local),
                     "--batch-size", "4", "--device", "cpu"]) == 0  # fmt: skip
    return {"run": run_dir, "model": model, "local": local.read_bytes()}


@pytest.mark.slow  # a Ray worker pool starts (~5 s)
def test_ray_scores_row_for_row_like_the_local_engine(ray_instance, trained, tmp_path):
    for engine in ("ray", "local"):
        code = cli_main(["score", "--engine", engine, "--run", str(trained["run"]), "--images", str(IMAGES),
                         "--out", str(tmp_path / f"{engine}.csv"), "--batch-size", "4", "--device", "cpu",
                         "--maps", str(tmp_path / f"maps-{engine}")] + (["--workers", "2"] if engine == "ray" else []))  # fmt: skip
        assert code == 0
    out = tmp_path / "ray.csv"
    assert out.read_bytes() == trained["local"]  # same rows, same order, same score text
    assert not partial_path(out).exists() and not Path(f"{partial_path(out)}.log").exists()
    maps = {engine: sorted((tmp_path / f"maps-{engine}").rglob("*.png")) for engine in ("ray", "local")}
    assert len(maps["ray"]) == 50 and [p.relative_to(tmp_path / "maps-ray") for p in maps["ray"]] == [
        p.relative_to(tmp_path / "maps-local") for p in maps["local"]]  # fmt: skip
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(maps["ray"], maps["local"]))  # the same heat maps


@pytest.mark.slow  # a Ray worker pool starts (~5 s)
def test_ray_scores_a_zip_with_a_model_file_like_the_local_engine(ray_instance, trained, tmp_path):
    archive = tmp_path / "test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(IMAGES.rglob("*.jpg")):
            zf.write(path, path.relative_to(IMAGES).as_posix())
    out = tmp_path / "ray.csv"
    code = cli_main(["score", "--engine", "ray", "--workers", "1", "--model", str(trained["model"]),
                     "--images", str(archive), "--out", str(out), "--batch-size", "4", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert out.read_bytes() == trained["local"]


@pytest.mark.slow  # a Ray worker pool starts (~5 s)
def test_a_killed_ray_job_started_again_writes_every_row_once(ray_instance, trained, tmp_path, capsys):
    out = tmp_path / "ray.csv"
    log = Path(f"{partial_path(out)}.log")
    args = ["score", "--engine", "ray", "--run", str(trained["run"]), "--images", str(IMAGES), "--out", str(out),
            "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    address = ray_instance.get_runtime_context().gcs_address
    job = subprocess.Popen([sys.executable, "-m", "adcore", *args, "--ray-address", address, "--workers", "1"],
                           cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},  # torch threads as in tests
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 1 + 5:  # the job line + 5 batches
                break
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be killed"
        os.kill(job.pid, signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            job.kill()
    done = len(log.read_text().splitlines()) - 1
    assert 5 <= done < 25 and not out.exists()  # 50 images in batches of 2: killed part way
    # A row that reached .part but not the log (killed between the two writes) must not survive.
    with partial_path(out).open("ab") as fh:
        fh.write(b"contamination/000.jpg,0.5,norm")

    assert cli_main([*args, "--workers", "2"]) == 0
    assert out.read_bytes() == trained["local"]  # every row once, in order, as a clean run writes it
    assert f"scored 50 image(s) -> {out} ({2 * done} of them by an earlier, interrupted run)" in capsys.readouterr().out


def test_without_ray_the_message_names_the_extra(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    code = cli_main(["score", "--engine", "ray", "--run", str(trained["run"]), "--images", str(IMAGES),
                     "--out", str(tmp_path / "s.csv")])  # fmt: skip
    assert code == 2
    assert "pip install -r requirements-ray.txt" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_adcore_never_imports_ray_unless_asked():
    code = "import sys, adcore.cli, adcore.cli.score, adcore.ray_engine; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.slow  # a Ray worker pool starts (~5 s)
def test_a_text_file_of_paths_scores_alike_in_both_engines(ray_instance, trained, tmp_path, capsys):
    folder_rows = [line.split(",") for line in trained["local"].decode().splitlines()]
    listed = [IMAGES / row[0] for row in folder_rows[1:]]
    paths = tmp_path / "photos.txt"
    paths.write_text("# one path a line\n" + "".join(f"{p}\n\n" for p in listed) + "missing.jpg\nnotes.csv\n")
    outs = {engine: tmp_path / f"{engine}.csv" for engine in ("local", "ray")}
    for engine, out in outs.items():
        code = cli_main(["score", "--engine", engine, "--run", str(trained["run"]), "--images", str(paths),
                         "--out", str(out), "--batch-size", "4", "--device", "cpu"])  # fmt: skip
        assert code == 0
        printed = capsys.readouterr().out
        assert "skipped missing.jpg: no such file" in printed and "skipped notes.csv: not an image" in printed
    assert outs["ray"].read_bytes() == outs["local"].read_bytes()
    rows = [line.split(",") for line in outs["local"].read_text().splitlines()]
    assert [row[0] for row in rows[1:]] == [str(p) for p in listed]  # the paths as the list writes them
    assert [row[1:] for row in rows] == [row[1:] for row in folder_rows]  # the folder's scores, in its order


class Cluster:
    """What ``worker_resources`` asks of Ray: the cluster's resources (no GPU here to ask a real one)."""

    def __init__(self, resources: dict) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict:
        return self.resources


def test_workers_take_one_gpu_each_where_the_cluster_has_gpus_else_a_share_of_its_cpus():
    assert worker_resources(Cluster({"CPU": 64.0, "GPU": 4.0}), None) == (4, {"num_gpus": 1})
    assert worker_resources(Cluster({"CPU": 64.0, "GPU": 4.0}), 2) == (2, {"num_gpus": 1})
    assert worker_resources(Cluster({"CPU": 2.0}), None) == (2, {"num_cpus": 1})
    assert worker_resources(Cluster({"CPU": 2.0}), 1) == (1, {"num_cpus": 2})
    for resources, workers in (({"CPU": 2.0}, 3), ({"CPU": 64.0, "GPU": 4.0}, 5), ({"CPU": 2.0}, 0)):
        with pytest.raises(ValueError, match="do not fit|at least 1"):
            worker_resources(Cluster(resources), workers)
