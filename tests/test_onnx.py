"""ONNX export: the graph scores photos as its run did, in a process where torch cannot be imported."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from adcore import onnx_export
from adcore.cli import main as cli_main
from adcore.data import load_image
from adcore.methods import build_method
from adcore.methods.base import METHODS, FitContext
from adcore.onnx_model import load_onnx_model
from adcore.runs import load_run
from adcore.threshold import threshold_for
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec, textured, textured_set

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "autoencoder": {"image_size": 32, "epochs": 3, "width": 8, "batch_size": 4},
    "patchcore": {"image_size": 64},
    # confidence 0.5: any lead a coin flip would not give counts, so members are combined or the maps come
    # from another member than the scores (the default's other cases)
    "auto": {"image_size": 64, "batch_size": 8, "search_images": 12, "confidence": 0.5},
}
_AE = {"image_size": 32, "epochs": 3, "width": 8, "batch_size": 4}
# Every other registered method, on the same tiny set (each exports its own inference module).
OTHER_RUNS = {
    "pretrained_gaussian": {"image_size": 64},
    "memae": {**_AE, "memory_size": 20},
    "ognet": {**_AE, "discriminator_epochs": 2},
    "student_teacher": {"image_size": 64, "layers": "8+16", "students": 2, "student_width": 8, "epochs": 3,
                        "batch_size": 4},
    "cutpaste": {"epochs": 2, "patch_size": 16, "patch_stride": 8, "image_size": 64, "batch_size": 8},
    "contrastive": {"epochs": 2, "queue_size": 32, "image_size": 64, "batch_size": 8},
    "patchcore_segmenter": {"image_size": 64, "layers": "8+16", "batch_size": 4, "epochs": 2},
}
# What a scoring PC on the line lacks: torch and everything else but numpy, Pillow and onnxruntime.
BLOCKED = ("torch", "torchvision", "safetensors", "sklearn", "scipy", "tqdm", "streamlit", "pandas", "plotly")
NO_TORCH = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # import raises ImportError
from adcore.cli import main
status = main(sys.argv[1:])
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch could be imported")
loaded = sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in {BLOCKED!r})
if loaded:
    raise SystemExit(f"imported {{loaded}}")
sys.exit(status)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_mvtec(tmp_path_factory.mktemp("onnx") / "set", n_train=24, size=64)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    """``exported(name)``: a tiny run of that method and its ONNX export (written by the CLI), made once."""
    made: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            params = {**RUNS, **OTHER_RUNS}[name]
            run_dir = train_run(TrainSpec(method=name, data=str(data), params=params, device="cpu"), root / "runs")
            model = root / "model.onnx"
            assert cli_main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(model)]) == 0
            made[name] = {"name": name, "run": run_dir, "model": model}
        return made[name]

    return get


def score_without_torch(*args: str) -> subprocess.CompletedProcess:
    """`python -m adcore score ...` in a fresh interpreter in which torch (and more) cannot be imported."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, "score", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def read_scores(path: Path) -> dict[str, tuple[float, str]]:
    with path.open(newline="") as fh:
        return {r["path"]: (float(r["score"]), r["decision"]) for r in csv.DictReader(fh)}


@pytest.mark.parametrize("name", list(RUNS))
def test_onnx_scores_equal_the_runs_own_without_torch(name, exported, data, tmp_path):
    exported = exported(name)
    out = tmp_path / "scores.csv"
    done = score_without_torch("--model", str(exported["model"]), "--images", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = read_scores(out)
    run = load_run(exported["run"])
    if name == "auto":
        assert len(run.config["selection"]["members"]) > 1, run.config["selection"]["reason"]
    real = run.results["role"] != "synthetic"
    paths, expected = run.results["rel_path"][real], run.results["score"][real]
    assert len(paths) == 30 and set(paths) <= set(rows)
    got = np.array([rows[p][0] for p in paths])
    assert np.max(np.abs(got - expected) / np.abs(expected)) <= 1e-4
    threshold = threshold_for(run, None).value
    assert [rows[p][1] for p in paths] == ["anomalous" if s >= threshold else "normal" for s in got]


def test_every_method_is_checked_here():
    assert set(RUNS) | set(OTHER_RUNS) == set(METHODS.names())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "cutpaste" else n for n in OTHER_RUNS]
)
def test_every_other_method_exports_with_the_same_scores(name, exported, data):
    exported = exported(name)
    run = load_run(exported["run"])
    real = np.flatnonzero(run.results["role"] != "synthetic")
    images = [load_image(data / run.results["rel_path"][i]) for i in real]
    got, expected = load_onnx_model(exported["model"]).predict(images).scores, run.results["score"][real]
    # relative to the score's scale: z-scored combinations (ognet, the segmenter) have scores near 0
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))


@pytest.mark.parametrize("name", list(RUNS))
def test_the_file_carries_the_methods_preprocessing_and_threshold(name, exported):
    exported = exported(name)
    run = load_run(exported["run"])
    method = run.load_method(torch.device("cpu"))
    header = json.loads({p.key: p.value for p in onnx.load(str(exported["model"])).metadata_props}["adcore.header"])
    assert header["preprocessing"]["resize"] == method.resize_rule().to_dict()
    assert header["preprocessing"]["input_shape"] == list(method.resize_rule().shape(64, 64))
    assert header["threshold"]["value"] == threshold_for(run, None).value
    assert header["method"] == {"name": exported["name"], "params": method.get_params()}


@pytest.mark.parametrize("name", list(RUNS))
def test_heat_maps_match_the_torch_maps(name, exported, data):
    exported = exported(name)
    image = load_image(data / "test/spot/000.png")
    method = load_run(exported["run"]).load_method(torch.device("cpu"))
    expected = method.predict([image]).anomaly_maps[0]
    got = load_onnx_model(exported["model"]).predict([image]).anomaly_maps[0]
    assert got.shape == expected.shape == image.shape[:2]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_methods_that_cannot_export_say_why():
    tiled = build_method("patchcore", image_size=32, tile_size=32)
    tiled.fit(textured_set(3, size=64), FitContext(device=torch.device("cpu")))
    with pytest.raises(ValueError, match="tiles"):
        onnx_export.inference_module(tiled)


def test_a_keep_aspect_export_refuses_photos_of_another_shape(data, tmp_path):
    run_dir = train_run(TrainSpec(method="patchcore", data=str(data), params={"image_size": 64}, device="cpu"),
                        tmp_path / "runs")  # fmt: skip
    model_path = onnx_export.export_onnx(run_dir, tmp_path / "wide.onnx", photo_size=(64, 128))
    model = load_onnx_model(model_path)
    method = load_run(run_dir).load_method(torch.device("cpu"))
    assert model.input_shape == method.resize_rule().shape(64, 128) == (32, 96)
    wide = textured(np.random.default_rng(3), 128)[:64]
    assert model.predict([wide]).scores[0] == pytest.approx(method.score([wide])[0], rel=1e-4)
    with pytest.raises(ValueError, match="--photo-size 64x64"):
        model.predict([load_image(data / "test/good/000.png")])


def test_a_large_graph_keeps_its_weights_beside_it(exported, tmp_path, monkeypatch):
    exported = exported("patchcore")
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_BYTES", 1000)
    out = onnx_export.export_onnx(exported["run"], tmp_path / "big.onnx")
    data_file = tmp_path / "big.onnx.data"
    assert data_file.stat().st_size > out.stat().st_size
    image = textured(np.random.default_rng(5), 64)
    small = load_onnx_model(exported["model"]).predict([image]).scores
    assert np.array_equal(load_onnx_model(out).predict([image]).scores, small)


def test_the_cli_refuses_a_scorer_and_a_foreign_file(exported, tmp_path, capsys):
    exported = exported("autoencoder")
    args = ["export", "--run", str(exported["run"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    assert cli_main([*args, "--scorer", "knn"]) == 2
    assert "--scorer cannot be exported to ONNX" in capsys.readouterr().err
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(exported["model"]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(ValueError, match="not one exported by adcore"):
        load_onnx_model(foreign)


def test_exact_distances_of_patches_in_the_memory_are_near_zero():
    # A training photo's patches are in the memory: the cdist shortcut leaves float32 noise of about
    # 1e-7 of |q|^2 (a different amount in onnxruntime), the exact distances (PatchCore's) do not.
    from adcore.methods.patchcore import knn_distance

    bank = torch.randn(4000, 432, generator=torch.Generator().manual_seed(0)) * 3
    queries = torch.cat([bank[:50], torch.randn(50, 432, generator=torch.Generator().manual_seed(1)) * 3])
    truth = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    exact, shortcut = knn_distance(queries, bank, 1, exact=True), knn_distance(queries, bank, 1)
    assert float((exact - truth).abs().max()) < 1e-4 < float((shortcut[:50] - truth[:50]).abs().max())
    assert torch.allclose(exact[50:], truth[50:].float(), rtol=1e-5)


def test_an_onnx_model_shrinks_large_photos_as_its_training_kept_them(tmp_path):
    from PIL import Image

    from adcore.loaded_model import model_from_run

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(textured(rng, 64)).resize((240, 160))) for _ in range(8)]
    for i, photo in enumerate(photos[:6]):  # the last two are new photos
        Image.fromarray(photo).save(folder / f"{i}.png")
    run_dir = train_run(TrainSpec(data=str(folder), method="patchcore", params={"image_size": 32}, max_photo_side=120,
                                  device="cpu"), tmp_path / "runs")
    model = onnx_export.export_onnx(run_dir, tmp_path / "m.onnx")
    onnx_model, torch_model = load_onnx_model(model), model_from_run(run_dir, "cpu")
    assert onnx_model.config["max_photo_side"] == 120
    got, want = onnx_model.predict(photos[6:]), torch_model.predict(photos[6:])
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)
    assert [m.shape for m in got.anomaly_maps] == [(160, 240)] * 2  # back at each photo's own size
