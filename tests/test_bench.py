"""``python -m adcore bench``: one JSON row per method and scorer, a table, clear errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

import adcore.cli.bench as bench_cli
from adcore.cli import main
from tests.helpers import make_tiny_mvtec

KEYS = {
    "method", "scorer", "image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_pro", "hit_rate", "train_seconds",
    "images_per_second", "peak_memory_mb", "device", "image_size", "resnet18_ratio",
}


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(bench_cli, "REFERENCE_MIN_S", 0.05)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads on a shared 2-core machine are many times slower
    yield
    torch.set_num_threads(previous)


def test_bench_writes_one_row_per_method_and_scorer(tmp_path, capsys):
    data = make_tiny_mvtec(tmp_path / "set", n_train=8, n_test_good=3, n_defect=3, size=64)
    out = tmp_path / "results.json"

    code = main([
        "bench", "--data", str(data), "--methods", "patchcore,pretrained_gaussian", "--image-size", "64",
        "--param", "patchcore.coreset_ratio=0.5", "--param", "pretrained_gaussian.layers=8+16",
        "--batch-size", "4", "--out", str(out),
    ])

    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["scorer"]) for r in rows] == [
        ("patchcore", "own"), ("patchcore", "gaussian"), ("patchcore", "knn"),
        ("pretrained_gaussian", "own"), ("pretrained_gaussian", "gaussian"), ("pretrained_gaussian", "knn"),
    ]
    for r in rows:
        assert KEYS <= set(r)
        assert r["image_size"] == 64 and r["device"].startswith("cpu")
        assert 0 <= r["image_auroc"] <= 1 and r["images_per_second"] > 0 and r["resnet18_ratio"] > 0
        assert r["peak_memory_mb"] > 0 and r["train_seconds"] >= 0
        # Only the method's own score comes with maps.
        assert (r["pixel_auroc"] is not None) == (r["method"] == "patchcore" and r["scorer"] == "own")
        assert (r["pixel_pro"] is not None) == (r["hit_rate"] is not None) == (r["pixel_auroc"] is not None)
    assert 0 <= rows[0]["pixel_pro"] <= 1 and rows[0]["hit_rate"] in (0, 1 / 3, 2 / 3, 1)
    assert rows[0]["params"]["coreset_ratio"] == 0.5 and rows[3]["params"]["layers"] == "8+16"
    printed = capsys.readouterr().out
    assert "pix AUROC" in printed and "PRO 30%" in printed and "hit rate" in printed and "x RN18" in printed and f"results -> {out}" in printed


def test_bench_explicit_scorers_and_methods_without_embeddings(tmp_path, capsys):
    data = make_tiny_mvtec(tmp_path / "set", n_train=6, n_test_good=2, n_defect=2, size=48)
    out = tmp_path / "r.json"
    code = main([
        "bench", "--data", str(data), "--methods", "autoencoder", "--scorers", "own,iforest",
        "--image-size", "32", "--param", "autoencoder.epochs=1", "--param", "autoencoder.width=8",
        "--out", str(out),
    ])
    assert code == 0
    rows = json.loads(out.read_text())
    # The autoencoder gives embeddings, so both scorers are measured.
    assert [r["scorer"] for r in rows] == ["own", "iforest"]
    assert rows[0]["pixel_auroc"] is not None and rows[1]["pixel_auroc"] is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--methods", "patchcore", "--scorers", "own,magic"], "unknown scorer 'magic'"),
        (["--methods", "patchcore", "--param", "coreset_ratio=0.5"], "METHOD.KEY=VALUE"),
        (["--methods", "patchcore", "--param", "autoencoder.epochs=1"], "not in --methods"),
        (["--methods", "patchcore", "--param", "patchcore.colour=red"], "has no parameter 'colour'"),
    ],
)
def test_bench_rejects_bad_input_clearly(tmp_path, capsys, extra, message):
    code = main(["bench", "--data", str(tmp_path), *extra, "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_bench_saves_each_method_as_it_finishes_and_a_failure_costs_only_that_method(tmp_path, capsys, monkeypatch):
    from adcore.methods import get_method_class

    data = make_tiny_mvtec(tmp_path / "set", n_train=6, n_test_good=2, n_defect=2, size=48)
    out = tmp_path / "r.json"
    seen_when_memae_started = []

    def broken_fit(self, images, ctx):
        # By now the autoencoder's row is on disk and on the screen.
        seen_when_memae_started.append(json.loads(out.read_text()))
        assert "autoencoder | own" in capsys.readouterr().out
        raise RuntimeError("the network exploded")

    monkeypatch.setattr(get_method_class("memae"), "fit", broken_fit)
    code = main([
        "bench", "--data", str(data), "--methods", "autoencoder,memae,pretrained_gaussian", "--scorers", "own",
        "--image-size", "32", "--param", "autoencoder.epochs=1", "--param", "autoencoder.width=8",
        "--out", str(out),
    ])

    assert code == 1, "a failed method makes the exit status say so"
    assert [(r["method"], r["scorer"]) for r in seen_when_memae_started[0]] == [("autoencoder", "own")]
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["autoencoder", "memae", "pretrained_gaussian"]
    assert rows[1]["error"] == "RuntimeError: the network exploded" and rows[1]["scorer"] is None
    assert rows[2]["image_auroc"] is not None, "the method after the failure still ran"
    captured = capsys.readouterr()
    assert re.search(r"memae +\| FAILED: RuntimeError: the network exploded", captured.out)
    assert "1 of 3 method(s) failed: memae" in captured.err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


def test_bench_measures_auto_at_the_size_it_chose_and_keeps_its_selection(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=14, n_test_good=2, n_defect=2, size=64)
    out = tmp_path / "r.json"
    # No --image-size: auto's image_size 0 means "from the photos" (here the 224 px minimum).
    code = main(["bench", "--data", str(data), "--methods", "auto", "--scorers", "own",
                 "--param", "auto.search_images=8", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    row = json.loads(out.read_text())[0]
    assert row["image_size"] == 224 and row["params"]["image_size"] == 0
    assert row["selection"]["candidates"] and row["selection"]["decision"] in ("pick", "combine")
    assert row["pixel_pro"] is not None and row["hit_rate"] is not None
