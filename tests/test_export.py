"""Model export (one verified file), loading it safely, and batch scoring with `score --model/--run`."""

from __future__ import annotations

import csv
import io
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from adcore import export, files, model_file
from adcore.batch import decoded_batches, heatmap_rgb, list_images
from adcore.cli import main as cli_main
from adcore.data import load_image
from adcore.export import ScorerSpec, export_run
from adcore.loaded_model import load_model
from adcore.model_file import read_model_bytes
from adcore.runs import load_run, update_config
from adcore.scoring import rescore_run
from adcore.threshold import Threshold, default_threshold, is_anomalous, threshold_for
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec, textured

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "epochs": 2, "width": 8, "batch_size": 4}
REFUSED = r"damaged|modified|truncated|not an adcore model|not a safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run and its exported model file, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("export")
    data = make_tiny_mvtec(root / "set")
    run_dir = train_run(TrainSpec(method="autoencoder", data=str(data), params=TINY), root / "runs")
    model_path = root / "model.adcore"
    assert cli_main(["export", "--run", str(run_dir), "--out", str(model_path)]) == 0
    return {"data": data, "run": run_dir, "model": model_path}


def score_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m adcore score ...` in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "adcore", "score", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- export and load ---------------------------------------------------------------------------


def test_exported_model_scores_identically_in_a_fresh_process(trained, tmp_path):
    out = tmp_path / "scores.csv"
    done = score_cli("--model", str(trained["model"]), "--images", str(trained["data"] / "test"),
                     "--out", str(out), "--device", "cpu", "--batch-size", "32")
    assert done.returncode == 0, done.stderr
    rows = read_csv(out)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert len(rows) == 6 and rows[0]["path"] == "good/000.png"

    method = load_run(trained["run"]).load_method(torch.device("cpu"))
    images = [load_image(trained["data"] / "test" / r["path"]) for r in rows]
    expected = method.score(images, batch_size=32)
    assert np.array_equal(np.array([float(r["score"]) for r in rows]), expected)  # bit for bit

    # ...and the same scores the run stored when it was trained.
    results = load_run(trained["run"]).results
    stored = dict(zip(results["rel_path"][results["role"] == "test"], results["score"][results["role"] == "test"]))
    np.testing.assert_allclose([float(r["score"]) for r in rows], [stored[f"test/{r['path']}"] for r in rows],
                               rtol=1e-5)


def test_model_file_holds_config_preprocessing_threshold_and_versions(trained):
    model = load_model(trained["model"], device="cpu")
    cfg = model.config
    assert cfg["format"] == "adcore-model" and cfg["format_version"] == model_file.FORMAT_VERSION
    assert cfg["method"]["name"] == "autoencoder" and cfg["method"]["params"]["image_size"] == 32
    assert cfg["preprocessing"]["resize"] == {**load_run(trained["run"]).load_method().resize_rule().to_dict()}
    assert cfg["preprocessing"]["resize"]["size"] == 32 and not cfg["preprocessing"]["resize"]["keep_aspect"]
    assert {"adcore", "torch", "safetensors", "python", "format"} <= set(cfg["versions"])
    assert cfg["scorer"] is None and model.scorer is None and cfg["frozen_backbone"] is None
    # No chosen threshold in the run: the project's default (target false-alarm rate on the hold-out).
    expected = default_threshold(load_run(trained["run"]))
    assert (model.threshold.value, model.threshold.how) == (expected.value, expected.how)
    assert cfg["threshold"]["method"] == "false_alarm_rate" and cfg["threshold"]["details"]["source"]


def test_a_run_s_chosen_threshold_wins_and_ties_are_anomalous(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    chosen = Threshold(3.5, "picked on the Threshold page", {"rule": "f1_optimal"})
    update_config(run_dir, threshold=chosen.to_dict())
    assert threshold_for(load_run(run_dir), None) == chosen
    export_run(run_dir, tmp_path / "m.adcore")
    model = load_model(tmp_path / "m.adcore")
    assert model.threshold.value == 3.5 and model.config["threshold"]["method"] == "f1_optimal"
    assert is_anomalous([3.4, 3.5, 3.6], 3.5).tolist() == [False, True, True]
    assert model.decide(np.array([3.5])).tolist() == [True]


def test_manual_threshold_from_the_export_command(trained, tmp_path):
    path = tmp_path / "manual.adcore"
    assert cli_main(["export", "--run", str(trained["run"]), "--out", str(path), "--threshold", "5"]) == 0
    model = load_model(path, device="cpu")
    assert model.threshold.value == 5.0 and model.config["threshold"]["method"] == "manual"
    assert cli_main(["export", "--run", str(trained["run"]), "--out", str(path)]) == 2  # exists, no --force


def test_a_threshold_saved_for_one_score_is_never_used_on_another(trained, tmp_path, capsys):
    import shutil

    from adcore.report import build_report

    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    run = load_run(run_dir)
    own = Threshold(float(run.results["score"].max()) / 2, "set on the Scores page", {"rule": "manual"})
    update_config(run_dir, threshold=own.to_dict(), scorer=None)  # saved for the method's own score
    knn = default_threshold(run, scores=rescore_run(run, "knn"))
    assert knn.value != own.value

    assert cli_main(["export", "--run", str(run_dir), "--out", str(tmp_path / "knn.adcore"), "--scorer", "knn"]) == 0
    printed = capsys.readouterr().out
    model = load_model(tmp_path / "knn.adcore", device="cpu")
    assert model.threshold.value == knn.value, "the default rule on the knn scores, not the saved value"
    assert "saved threshold" in printed and "chosen for the method's own score, not for the knn scorer" in printed
    assert threshold_for(load_run(run_dir), None) == own  # the own score keeps it

    # Saved for the knn scorer (parameters spelled out, as the Scores page saves them): kept for
    # `--scorer knn` (defaults left out), dropped for the method's own score.
    chosen = Threshold(knn.value * 2, "set on the Scores page", {"rule": "manual"})
    update_config(run_dir, threshold=chosen.to_dict(), scorer={"name": "knn", "params": {"k": 5, "standardize": True}})
    assert cli_main(["export", "--run", str(run_dir), "--out", str(tmp_path / "k2.adcore"), "--scorer", "knn",
                     "--force"]) == 0  # fmt: skip
    assert load_model(tmp_path / "k2.adcore", device="cpu").threshold.value == chosen.value
    run = load_run(run_dir)
    assert threshold_for(run, None).value == default_threshold(run).value
    assert "chosen for the knn scorer, not for the method's own score" in threshold_for(run, None).details["warnings"][0]
    # The report scores the run as saved (knn) and so keeps the saved threshold.
    assert f"Threshold {chosen.value:.4g}" in build_report(run, embedding_map=False, top_k=0)


def test_exported_embedding_scorer_scores_like_rescoring_the_run(trained, tmp_path):
    path = tmp_path / "knn.adcore"
    args = ["export", "--run", str(trained["run"]), "--out", str(path), "--scorer", "knn", "--scorer-param", "k=3"]
    assert cli_main(args) == 0
    model = load_model(path, device="cpu")
    assert model.config["scorer"]["name"] == "knn" and model.config["scorer"]["params"]["k"] == 3
    out = tmp_path / "scores.csv"
    done = score_cli("--model", str(path), "--images", str(trained["data"] / "test"), "--out", str(out),
                     "--device", "cpu")
    assert done.returncode == 0, done.stderr
    run = load_run(trained["run"])
    rescored = rescore_run(run, "knn", k=3)
    test = run.results["role"] == "test"
    expected = dict(zip(run.results["rel_path"][test], rescored[test]))
    rows = read_csv(out)
    np.testing.assert_allclose([float(r["score"]) for r in rows], [expected[f"test/{r['path']}"] for r in rows],
                               rtol=1e-6)
    # The threshold is set on the scorer's scores, not the method's.
    assert model.threshold.value == default_threshold(run, scores=rescored).value
    assert all(r["decision"] == ("anomalous" if float(r["score"]) >= model.threshold.value else "normal") for r in rows)
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        export_run(trained["run"], tmp_path / "x.adcore", scorer=ScorerSpec("nope"))


def test_a_different_pretrained_network_is_refused(trained, tmp_path, monkeypatch):
    path = tmp_path / "m.adcore"
    monkeypatch.setattr(export, "backbone_fingerprint", lambda method: {"name": "resnet18", "sha256": "ab" * 32})
    export_run(trained["run"], path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="made with the pretrained network resnet18 .* different weights"):
        load_model(path)


def test_backbone_fingerprint_covers_every_weight_and_buffer():
    from types import SimpleNamespace

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # has a 0-d buffer
    net.name = "tiny"
    first = export.backbone_fingerprint(SimpleNamespace(backbone_=net))
    assert first["name"] == "tiny" and first == export.backbone_fingerprint(SimpleNamespace(backbone_=net))
    with torch.no_grad():
        net[1].running_mean[0] += 1e-3
    assert export.backbone_fingerprint(SimpleNamespace(backbone_=net)) != first
    assert export.backbone_fingerprint(SimpleNamespace()) is None


# -- refusing anything that is not an intact model file ----------------------------------------


def test_every_changed_byte_is_refused(trained):
    data = trained["model"].read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    # Every byte of the length prefix and the header (padding included), then a stride through the tensors.
    positions = list(range(8 + header_len)) + list(range(8 + header_len, len(data), 997)) + [len(data) - 1]
    for pos in positions:
        changed = bytearray(data)
        changed[pos] ^= 0x01
        with pytest.raises(ValueError, match=REFUSED + "|newer than"):
            read_model_bytes(bytes(changed))
    read_model_bytes(data)  # the original still loads


def test_tampered_file_is_refused_by_load_model_and_the_cli(trained, tmp_path):
    data = bytearray(trained["model"].read_bytes())
    data[-100] ^= 0x40  # one byte of the weights
    bad = tmp_path / "tampered.adcore"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged or was modified: its SHA-256 digest does not match"):
        load_model(bad, device="cpu")
    done = score_cli("--model", str(bad), "--images", str(trained["data"] / "test"), "--out", str(tmp_path / "x.csv"))
    assert done.returncode == 2 and "damaged or was modified" in done.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("keep", [0, 7, 8, 100, "half", -1])
def test_truncated_file_is_refused(trained, tmp_path, keep):
    data = trained["model"].read_bytes()
    n = len(data) // 2 if keep == "half" else (len(data) + keep if keep < 0 else keep)
    path = tmp_path / "cut.adcore"
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match=REFUSED):
        load_model(path, device="cpu")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["torch.save", "pickle.dumps", "pickle protocol 0"])
def test_pickles_are_refused_without_being_run(tmp_path, kind):
    marker = tmp_path / "code-ran"
    payload = {"weights": torch.zeros(3), "trap": _RunsCodeWhenUnpickled(marker)}
    path = tmp_path / "model.adcore"
    if kind == "torch.save":
        torch.save(payload, path)
        message = "zip archive .*never loads"
    elif kind == "pickle.dumps":
        path.write_bytes(pickle.dumps(payload))
        message = "Python pickle, which adcore never loads"
    else:
        path.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker), protocol=0))
        message = "not an adcore model file"
    with pytest.raises(ValueError, match=message):
        load_model(path, device="cpu")
    assert not marker.exists()


def test_foreign_files_are_refused(tmp_path):
    st = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.randn(4, 3, 3, 3)}, str(st), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="safetensors file but not an adcore model"):
        load_model(st)
    png = tmp_path / "photo.png"
    Image.fromarray(textured(np.random.default_rng(0))).save(png)
    with pytest.raises(ValueError, match="it is a PNG image"):
        load_model(png)
    junk = tmp_path / "junk.adcore"
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(ValueError, match="not an adcore model file"):
        load_model(junk)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.adcore")


def test_a_newer_format_is_refused_with_an_upgrade_hint(trained, tmp_path, monkeypatch):
    path = tmp_path / "future.adcore"
    monkeypatch.setattr(model_file, "FORMAT_VERSION", 2)
    export_run(trained["run"], path)
    monkeypatch.setattr(model_file, "FORMAT_VERSION", 1)
    with pytest.raises(ValueError, match="model format 2, newer than this adcore reads \\(1\\); upgrade"):
        load_model(path)


def test_export_writes_atomically_and_leaves_no_temp_file(trained, tmp_path, monkeypatch):
    path = tmp_path / "m.adcore"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        export_run(trained["run"], path)
    assert list(tmp_path.iterdir()) == []


# -- batch scoring -----------------------------------------------------------------------------


def test_batch_scoring_lists_unreadable_files_and_keeps_going(trained, tmp_path):
    folder = tmp_path / "incoming"
    (folder / "line2").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(textured(rng)).save(folder / f"line2/{i:02d}.png")
    Image.fromarray(textured(rng, 64)[:40]).save(folder / "wide.jpg")  # 64x40: maps keep the input's size
    buf = io.BytesIO()
    Image.fromarray(textured(rng)).save(buf, format="PNG")
    (folder / "line2/corrupt.png").write_bytes(buf.getvalue()[:200])  # truncated PNG
    (folder / "notes.txt").write_text("shift 2, camera B")
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    done = score_cli("--model", str(trained["model"]), "--images", str(folder), "--out", str(out),
                     "--maps", str(maps), "--batch-size", "4", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "skipped line2/corrupt.png: truncated or corrupt" in done.stdout
    assert "skipped notes.txt: not an image" in done.stdout
    rows = read_csv(out)
    # Walk order: a folder's files (sorted), then its sub-folders (sorted); nothing is held back to sort.
    assert [r["path"] for r in rows] == ["wide.jpg"] + [f"line2/{i:02d}.png" for i in range(5)]
    assert set(rows[0]) == {"path", "score", "decision"}  # plain folder: no split/label

    threshold = load_model(trained["model"]).threshold.value
    for r in rows:
        assert r["decision"] == ("anomalous" if float(r["score"]) >= threshold else "normal")

    for r in rows:
        heat = Image.open(maps / Path(r["path"]).with_suffix(".png"))
        source = Image.open(folder / r["path"])
        assert heat.format == "PNG" and heat.mode == "RGB" and heat.size == source.size
    assert Image.open(maps / "wide.png").size == (64, 40)
    assert not (maps / "line2/corrupt.png").exists()


def test_score_with_run_uses_the_default_threshold_and_mvtec_columns(trained, tmp_path):
    out = tmp_path / "scores.csv"
    assert cli_main(["score", "--run", str(trained["run"]), "--images", str(trained["data"]), "--out", str(out),
                     "--device", "cpu"]) == 0
    rows = read_csv(out)
    assert set(rows[0]) == {"path", "score", "decision", "split", "label"}
    assert not any(r["path"].startswith("ground_truth/") for r in rows)  # masks are not inputs
    by_path = {r["path"]: r for r in rows}
    assert by_path["test/spot/000.png"]["split"] == "test" and by_path["test/spot/000.png"]["label"] == "spot"
    assert by_path["train/good/000.png"]["label"] == "good"
    threshold = threshold_for(load_run(trained["run"]), None).value
    assert all(r["decision"] == ("anomalous" if float(r["score"]) >= threshold else "normal") for r in rows)


def test_a_zip_scores_like_the_folder(trained, tmp_path):
    archive = tmp_path / "test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((trained["data"] / "test").rglob("*.png")):
            zf.write(path, path.relative_to(trained["data"] / "test").as_posix())
        zf.writestr("../escape.png", b"x")
    from_zip, from_folder = tmp_path / "zip.csv", tmp_path / "folder.csv"
    common = ["--model", str(trained["model"]), "--device", "cpu"]
    assert cli_main(["score", *common, "--images", str(archive), "--out", str(from_zip)]) == 0
    assert cli_main(["score", *common, "--images", str(trained["data"] / "test"), "--out", str(from_folder)]) == 0
    assert read_csv(from_zip) == read_csv(from_folder)


def test_nothing_scorable_is_an_error_not_a_crash(trained, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    code = cli_main(["score", "--model", str(trained["model"]), "--images", str(folder), "--out", str(tmp_path / "o.csv")])
    assert code == 1
    assert "no image" in capsys.readouterr().err


def test_decoding_runs_at_most_one_batch_ahead(tmp_path):
    """Memory stays flat: however long the listing, only the current and the next batch are decoded."""
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(textured(rng, 32)).save(tmp_path / f"{i:03d}.png")
    listing = list_images(tmp_path)
    assert listing.count == 40 and listing.layout == "plain"
    pulled = []

    def counting():
        for entry in listing:
            pulled.append(entry)
            yield entry

    batches = decoded_batches(counting(), batch_size=4)
    first = next(batches)
    assert len(first.images) == 4 and len(pulled) <= 8
    assert sum(b.n_files for b in batches) == 36


def test_heatmap_colours_with_a_fixed_range_and_blends_over_the_image():
    amap = np.array([[0.0, 1.0], [2.0, 10.0]], dtype=np.float32)
    rgb = heatmap_rgb(amap, low=0.0, high=2.0)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[1, 0] == rgb[1, 1]).all()  # at or above `high`: the same top colour
    image = np.full((2, 2, 3), 200, np.uint8)
    assert heatmap_rgb(amap, 0.0, 2.0, image, alpha=0.0).tolist() == image.tolist()
