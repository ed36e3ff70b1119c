"""The on-disk photo cache: training from it gives exactly the in-memory path's results, large photos
are kept at a bounded size, the cache folder goes away, and PatchCore's candidate patches are bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adcore.methods.patchcore as patchcore_module
from adcore.data import open_image_set
from adcore.methods import Cancelled, build_method
from adcore.methods.base import FitContext
from adcore.photo_cache import (
    ArrayFile,
    CachedImages,
    PhotoCache,
    TiledImages,
    cached_shape,
    stacked_thumbnail,
    take,
    thumbnail_stack,
)
from adcore.runs import load_run
from adcore.tiling import cut_tiles, tile_boxes
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec, textured, textured_set

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def _train_both(tmp_path: Path, **spec) -> tuple:
    runs = []
    for cached in (True, False):
        run_dir = train_run(TrainSpec(photo_cache=cached, **spec), tmp_path / f"runs-{cached}")
        runs.append(load_run(run_dir))
    return runs


def _assert_same_results(cached, in_memory) -> None:
    assert sorted(cached.results) == sorted(in_memory.results)
    for key in in_memory.results:
        np.testing.assert_array_equal(cached.results[key], in_memory.results[key], err_msg=key)
    assert cached.config["metrics"] == in_memory.config["metrics"]


@pytest.mark.slow  # two PatchCore runs on the 160 demo photos
def test_training_from_the_cache_gives_the_in_memory_scores_on_sample_data(tmp_path):
    params = {"seed": 3, "image_size": 96}
    cached, in_memory = _train_both(tmp_path, data=str(SAMPLE), method="patchcore", params=params)
    _assert_same_results(cached, in_memory)
    assert cached.config["metrics"]["pixel_auroc"] is not None  # the maps were compared with the masks
    assert cached.config["max_photo_side"] == 1024 and in_memory.config["max_photo_side"] is None


@pytest.mark.slow  # two searches of the default method (~1-2 min on 2 cores)
def test_the_default_method_from_the_cache_gives_the_in_memory_scores(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=24, n_test_good=3, n_defect=3, size=96)
    cached, in_memory = _train_both(tmp_path, data=str(data), method="auto", params={"seed": 1, "image_size": 64})
    _assert_same_results(cached, in_memory)
    assert _untimed(cached.config["selection"]) == _untimed(in_memory.config["selection"])


def _untimed(value):
    """``value`` without the (run-to-run different) durations it holds."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_tiles_from_the_cache_give_the_in_memory_scores(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=8, n_test_good=2, n_defect=2, size=80)
    params = {"image_size": 32, "tile_size": 48, "batch_size": 4}
    cached, in_memory = _train_both(tmp_path, data=str(data), method="patchcore", params=params)
    _assert_same_results(cached, in_memory)


def test_large_photos_are_kept_at_the_bounded_size_and_the_cache_is_removed(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(textured(rng, 64)).resize((300, 200)).save(folder / f"{i}.png")
    image_set = open_image_set(folder)
    skipped: list[dict] = []
    events = []
    with PhotoCache(max_side=120, root=tmp_path) as cache:
        records, images = cache.load(image_set.normal_train, skipped, on_progress=lambda d, t: events.append((d, t)))
        assert isinstance(images, CachedImages) and len(records) == 3 and not skipped
        assert [im.shape for im in images] == [(80, 120, 3)] * 3 == images.shapes
        assert cached_shape(200, 300, 120) == (80, 120) and cached_shape(50, 60, 120) == (50, 60)
        first, kept = images[0], images[0][0, 0].copy()
        first[0, 0] = 255 - kept  # copy-on-write: the cached file keeps its pixels
        np.testing.assert_array_equal(images[0][0, 0], kept)
        assert len(take(images, [2, 0])) == 2 and take(images, [2, 0]).files == [images.files[2], images.files[0]]
        assert len(images[1:]) == 2
        folder_used = cache.folder
        assert len(list(folder_used.glob("*.npy"))) == 3
    assert events == [(1, 3), (2, 3), (3, 3)]
    assert not folder_used.exists()


def test_unreadable_photos_are_skipped_with_their_reason(tmp_path):
    folder = make_tiny_mvtec(tmp_path / "set", n_train=3)
    image_set = open_image_set(folder)
    (folder / "train/good/001.png").write_bytes(b"broken")  # broken after the set was opened
    skipped: list[dict] = []
    with PhotoCache(root=tmp_path) as cache:
        records, images = cache.load(image_set.normal_train, skipped)
    assert [r.rel_path for r in records] == ["train/good/000.png", "train/good/002.png"]
    assert skipped and skipped[0]["rel_path"] == "train/good/001.png"


def test_a_stop_request_ends_the_decoding(tmp_path):
    image_set = open_image_set(make_tiny_mvtec(tmp_path / "set", n_train=12))
    stop, calls = threading.Event(), []

    def on_progress(done: int, total: int) -> None:
        calls.append(done)
        stop.set()

    with PhotoCache(root=tmp_path, workers=1) as cache:
        records, images = cache.load(image_set.normal_train, [], on_progress=on_progress, stop=stop)
    assert len(records) < 12 and len(calls) <= 4  # at most the photos already in flight


def test_a_cancelled_training_stops_while_decoding(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=12)
    stop = threading.Event()

    def on_progress(event: dict) -> None:
        if event["phase"] == "decoding photos":
            stop.set()

    with pytest.raises(Cancelled):
        train_run(TrainSpec(data=str(data), method="patchcore"), tmp_path / "runs", on_progress=on_progress,
                  stop_event=stop)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_lazy_tiles_are_the_tiles_cut_at_once():
    photos = textured_set(2, size=100)
    tiles = TiledImages(photos, 48, 0.25)
    expected = [t for p in photos for t in cut_tiles(p, tile_boxes(100, 100, 48, 0.25))]
    assert len(tiles) == len(expected)
    for a, b in zip(tiles, expected):
        np.testing.assert_array_equal(a, b)
    assert tiles.shapes == [t.shape for t in expected]


def test_patchcore_subsamples_candidate_patches_beyond_the_bound(monkeypatch):
    images = textured_set(12, size=64)
    full = build_method("patchcore", image_size=64, batch_size=4).fit(images, FitContext())
    dim = full.model_.bank.shape[1]
    monkeypatch.setattr(patchcore_module, "MAX_CANDIDATE_BYTES", 4 * dim * 100)  # room for 100 patches
    small = build_method("patchcore", image_size=64, batch_size=4, coreset_ratio=1.0).fit(images, FitContext())
    assert small.n_patches_ == full.n_patches_  # every patch was seen ...
    assert 90 <= len(small.model_.bank) <= 110  # ... but only about 100 were kept to choose from
    assert small.score(images[:2]).shape == (2,)


def test_a_model_sees_new_large_photos_at_the_size_training_kept_them(tmp_path):
    from adcore.loaded_model import model_from_run
    from adcore.photo_cache import shrink

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(textured(rng, 64)).resize((240, 160))) for _ in range(6)]
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(folder / f"{i}.png")
    params = {"image_size": 32, "tile_size": 40, "batch_size": 4}
    run_dir = train_run(TrainSpec(data=str(folder), method="patchcore", params=params, max_photo_side=120),
                        tmp_path / "runs")
    model = model_from_run(run_dir, "cpu")
    assert model.config["max_photo_side"] == 120
    prediction = model.predict(photos[:2])
    assert [m.shape for m in prediction.anomaly_maps] == [(160, 240)] * 2  # maps at each photo's own size
    direct = model.method.predict([shrink(p, 120) for p in photos[:2]])
    np.testing.assert_array_equal(prediction.scores, direct.scores)  # the tiles were cut at training's scale
    run = load_run(run_dir)
    fit = run.results["role"] == "fit"
    names = list(run.results["rel_path"][fit])
    again = model.predict([photos[int(Path(n).stem)] for n in names])
    np.testing.assert_allclose(again.scores, run.results["score"][fit], rtol=1e-5)


def test_a_cache_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    dead = _a_dead_pid()
    left = tmp_path / f"adcore-photos-{dead}-abc"
    left.mkdir()
    (left / "0000001.npy").write_bytes(b"x")
    mine = tmp_path / "adcore-photos-1-abc"  # pid 1 is alive: not ours to remove
    mine.mkdir()
    with PhotoCache(root=tmp_path) as cache:
        assert cache.folder.exists()
    assert not left.exists() and mine.exists()


def _a_dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_kept_arrays_come_back_exactly_one_at_a_time_and_go_with_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=shape).astype(np.float32) for shape in [(3, 5), (7, 2), (1, 1), (4, 4)]]
    with PhotoCache(root=tmp_path) as cache:
        kept = cache.arrays(iter(maps))  # a generator: the arrays need not all exist at once
        assert isinstance(kept, ArrayFile) and len(kept) == 4
        assert all(np.array_equal(kept[i], m) and kept[i].dtype == np.float32 for i, m in enumerate(maps))
        assert np.array_equal(kept[-1], maps[-1])
        other = cache.arrays(maps[:1])
        kept.drop()
        assert not kept.path.exists() and len(kept) == 0
        assert np.array_equal(other[0], maps[0]), "dropping one file leaves the others"
        folder = cache.folder
    assert not folder.exists()
    assert PhotoCache(in_memory=True).arrays(maps)[1] is maps[1]


def test_thumbnails_stack_photos_of_any_shape_and_come_back_unpadded():
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(320, 200), (50, 80), (160, 160)]]
    stack, shapes = thumbnail_stack(photos, side=64)
    assert stack.shape == (3, 64, 64, 3) and stack.dtype == np.uint8
    assert shapes.tolist() == [[64, 40], [40, 64], [64, 64]]
    for i, photo in enumerate(photos):
        h, w = shapes[i]
        expected = np.asarray(Image.fromarray(photo).resize((int(w), int(h)), Image.BILINEAR))
        assert np.array_equal(stacked_thumbnail(stack, shapes, i), expected)
    assert not stack[0, :, 40:].any(), "the padding is zeros"
    empty, no_shapes = thumbnail_stack([], side=64)
    assert empty.shape == (0, 64, 64, 3) and no_shapes.shape == (0, 2)
