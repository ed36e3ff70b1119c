"""The self-configuring method: its search on normal photos alone, the decision it takes, the
combination of candidates, save/load, cancel, and that test labels can never change its choice."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch

from adcore.methods import Cancelled, FitContext, build_method
from adcore.methods.auto import BOOTSTRAP, Auto, candidate_grid, describe_selection, pixel_ranks, selection_scores
from tests.helpers import make_tiny_mvtec, textured, textured_set

CPU = torch.device("cpu")
TINY = {"image_size": 64, "batch_size": 8, "search_images": 12}


@pytest.fixture(scope="module")
def normal_images():
    return textured_set(24)


@pytest.fixture(scope="module")
def fitted(normal_images):
    events = []
    method = build_method("auto", **TINY).fit(normal_images, FitContext(device=CPU, on_progress=events.append))
    return method, events


def test_the_selection_table_judges_every_candidate(fitted):
    method, events = fitted
    table = method.run_details()["selection"]
    grid = candidate_grid()
    assert [row["candidate"] for row in table["candidates"]] == [c.label for c in grid]
    for row in table["candidates"]:
        for key in ("score", "image", "pixel"):
            assert 0.0 <= row[key] <= 1.0
        assert row["score"] == pytest.approx((row["image"] + row["pixel"]) / 2, abs=1e-3)
        assert {f"{f} image" for f in table["families"]} <= set(row)
    assert table["decision"] in ("pick", "combine") and table["reason"]
    assert table["n_validation"] == 6 and table["defects_per_family"] == 3  # round(16 / 6)
    # Each member's memory size was judged on the kept-aside photos: 10 % unless a smaller share is clearly better.
    from adcore.methods.auto import MEMORY_SHARES

    for memory, member in zip(table["memory"], method.members_):
        assert [o["share"] for o in memory["options"]] == list(MEMORY_SHARES)
        assert memory["chosen share"] == 0.1  # memory=report: the table is shown, PatchCore's 10 % kept
        best = max(memory["options"], key=lambda o: o["score" if memory["judged by"] == "score" else memory["judged by"]])
        assert memory["best on the kept-aside photos"] == best["share"]
    for member in method.members_:
        _assert_fitted_on_every_photo(member, 0.1)
    # The page sees the table grow while the search runs.
    live = [e["selection"]["candidates"] for e in events if "selection" in e and "decision" not in e["selection"]]
    assert [len(rows) for rows in live] == list(range(1, len(grid) + 1))


def test_the_decision_follows_the_table(fitted):
    """Scores come from the best candidate by image separation, maps from the best by pixel
    separation, or from the best few combined where their measured combination separates better."""
    method, _ = fitted
    table = method.selection_
    key = lambda r: (r["layers"], r["neighbourhood"], r["normalize"])  # noqa: E731
    labels = {key(r): r["candidate"] for r in table["candidates"]}
    for part, which in (("image", table["image_members"]), ("pixel", table["map_members"])):
        used = [labels[key(table["members"][k])] for k in which]
        best = max(table["candidates"], key=lambda r: r[part])
        combos = [c for c in table["combinations"] if part in c["of the best by"]]
        top = max(combos, key=lambda c: c[part])
        clear = top[part] > best[part] and best[f"beats best {part}"] <= 0.1  # the best one rarely matches it
        if part == "pixel" and "from the same" in table["pixel reason"]:
            # The photo scores' choice draws maps within noise of the best: it draws them too.
            assert table["map_members"] == table["image_members"]
        elif table[f"{part} decision"] == "pick":
            assert used == [best["candidate"]] and not clear
        else:
            assert used == top["combination"] and clear
    assert len(method.members_) == len({k for k in table["image_members"] + table["map_members"]})


def _two_members(normal_images):
    """An auto model of two members fitted directly: scores from the first, maps from both combined
    (their scale set on the last 6 photos, which are returned)."""
    method = build_method("auto", **TINY)
    method._prepare(FitContext(device=CPU))
    method.selection_ = {}
    fit, calibration = normal_images[:18], normal_images[18:]
    grid = candidate_grid()
    method._fit_members([grid[0], grid[6]], fit, calibration, FitContext(device=CPU), None, [0], [0, 1], refit=False)
    return method, calibration


def test_scores_and_maps_come_from_their_own_members_combined_on_one_scale(normal_images):
    method, calibration = _two_members(normal_images)
    probe = [textured(np.random.default_rng(9), 64)]
    probe[0][20:30, 20:30] = 250
    pred = method.predict(probe)
    parts = [m.predict(probe).anomaly_maps[0] for m in method.members_]
    expected = np.mean([(p - float(c[0])) / float(c[1]) for p, c in zip(parts, method.model_.calibration)], 0)
    assert np.allclose(pred.anomaly_maps[0], expected, atol=1e-5)
    assert pred.scores[0] == pytest.approx(float(parts[0].max()), rel=1e-6)  # scores: member 0 alone, raw
    # Calibrated on the kept-aside photos: their maps have mean 0 and spread 1 for every member.
    for member, (mu, sd) in zip(method.members_, method.model_.calibration.tolist()):
        values = np.concatenate([m.ravel() for m in member.predict(calibration).anomaly_maps])
        assert (values.mean() - mu) / sd == pytest.approx(0, abs=1e-4) and values.std() / sd == pytest.approx(1, rel=1e-4)
    # Both roles survive save/load.
    loaded = build_method("auto", **TINY).load_state_dict(method.state_dict(), CPU)
    again = loaded.predict(probe)
    assert np.array_equal(again.scores, pred.scores) and np.array_equal(again.anomaly_maps[0], pred.anomaly_maps[0])


def test_measured_combinations_are_the_z_scored_mean_of_the_members_maps():
    from adcore.methods.auto import combine_maps

    rng = np.random.default_rng(0)
    kinds = np.array(["normal", "normal", "spot"])
    a = [rng.normal(5, 2, (4, 4)) for _ in kinds]
    b = [rng.normal(-1, 0.5, (4, 4)) for _ in kinds]
    out = combine_maps([a, b], kinds)
    za = [(m - np.concatenate([a[0].ravel(), a[1].ravel()]).mean()) / np.concatenate([a[0].ravel(), a[1].ravel()]).std() for m in a]
    zb = [(m - np.concatenate([b[0].ravel(), b[1].ravel()]).mean()) / np.concatenate([b[0].ravel(), b[1].ravel()]).std() for m in b]
    for o, x, y in zip(out, za, zb):
        assert np.allclose(o, (x + y) / 2)


def test_save_and_load_give_identical_scores(fitted, normal_images):
    method, _ = fitted
    probe = normal_images[:3]
    state = method.state_dict()
    loaded = build_method("auto", **TINY).load_state_dict(state, CPU)
    a, b = method.predict(probe), loaded.predict(probe)
    assert np.array_equal(a.scores, b.scores)
    assert all(np.array_equal(x, y) for x, y in zip(a.anomaly_maps, b.anomaly_maps))
    assert loaded.selection_ == json.loads(json.dumps(method.selection_))


def test_a_pasted_square_lights_up_the_map(fitted):
    method, _ = fitted
    rng = np.random.default_rng(4)
    clean = [textured(rng, 64) for _ in range(4)]
    defect = textured(rng, 64)
    defect[30:40, 14:24] = 250
    pred = method.predict(clean + [defect])
    assert pred.scores[-1] > pred.scores[:-1].max()
    y, x = np.unravel_index(int(np.argmax(pred.anomaly_maps[-1])), (64, 64))
    assert 26 <= y < 44 and 10 <= x < 28


def test_too_few_photos_use_a_standard_setting_and_say_so():
    rng = np.random.default_rng(1)
    method = build_method("auto", **TINY).fit([textured(rng, 64) for _ in range(6)], FitContext(device=CPU))
    assert method.selection_["decision"] == "default"
    assert "too few" in method.selection_["reason"] and method.selection_["candidates"] == []


def test_cancel_stops_the_search(normal_images):
    stop = threading.Event()

    def on_progress(event):
        if event["phase"].startswith("search: judging"):
            stop.set()

    with pytest.raises(Cancelled):
        build_method("auto", **TINY).fit(normal_images, FitContext(device=CPU, on_progress=on_progress, stop_event=stop))


def test_a_spent_time_budget_ends_the_search_with_the_candidates_judged_so_far(normal_images):
    ctx = FitContext(device=CPU, budget_s=1e-9)  # spent before the first candidate
    method = build_method("auto", **TINY).fit(normal_images, ctx)
    sel = method.selection_
    views = {(r["normalize"], r["tile_size"], r["backbone"]) for r in sel["candidates"]}
    assert len(views) == 1 and 0 < len(sel["candidates"]) < len(candidate_grid()), "one view, then it stopped"
    assert "ran out after" in sel["stopped_by_budget"] and ctx.stopped_by_budget
    chosen = {(m["layers"], m["neighbourhood"], m["normalize"]) for m in sel["members"]}
    judged = {(r["layers"], r["neighbourhood"], r["normalize"]) for r in sel["candidates"]}
    assert chosen <= judged
    assert "time budget ran out" in describe_selection(sel)[1]
    assert np.isfinite(method.predict(normal_images[:2]).scores).all()


def test_selection_scores_by_hand():
    # Two clean photos and two spot defects: image AUROC 1 (both defects above both clean photos);
    # pixel: one defect's mean lies above 3 of the 4 clean pixels, the other above all of them.
    scores = np.array([0.1, 0.2, 0.5, 0.6])
    means = np.array([np.nan, np.nan, 0.35, 0.9])
    pixels = np.sort(np.array([0.1, 0.2, 0.3, 0.4]))
    kinds = np.array(["normal", "normal", "spot", "spot"])
    out = selection_scores(scores, pixel_ranks(means, pixels), kinds, np.array([0, 1]), np.array([2, 3]))
    assert out["families"]["spot"] == (1.0, pytest.approx((3 / 4 + 1) / 2))
    assert out["score"] == pytest.approx((1.0 + 7 / 8) / 2)
    assert "hit" not in out
    # One of the two defects has its hottest pixel on it: located 1/2; a resample with the first
    # defect twice, 0.
    located = np.array([np.nan, np.nan, 0.0, 1.0])
    assert selection_scores(scores, pixel_ranks(means, pixels), kinds, np.array([0, 1]), np.array([2, 3]),
                            located)["hit"] == 0.5
    assert selection_scores(scores, pixel_ranks(means, pixels), kinds, np.array([0, 1]), np.array([2, 2]),
                            located)["hit"] == 0.0
    assert BOOTSTRAP >= 100


@pytest.mark.slow
def test_poisoned_test_labels_do_not_change_the_choice(tmp_path):
    """The selection reads normal training photos only: scrambling every test label and mask
    leaves the selection table, and the scores of the training photos, exactly as they were."""
    from adcore.runs import load_run
    from adcore.training import TrainSpec, train_run

    clean = make_tiny_mvtec(tmp_path / "clean", n_train=24, n_test_good=4, n_defect=4, size=64)
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean, poisoned)
    # Every good test photo becomes a "defect" with a full mask, every defect photo "good".
    (poisoned / "test" / "good").rename(poisoned / "test" / "tmp")
    (poisoned / "test" / "spot").rename(poisoned / "test" / "good")
    (poisoned / "test" / "tmp").rename(poisoned / "test" / "spot")
    shutil.rmtree(poisoned / "ground_truth" / "spot")
    (poisoned / "ground_truth" / "spot").mkdir()
    from PIL import Image

    for f in (poisoned / "test" / "spot").iterdir():
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(poisoned / "ground_truth" / "spot" / f"{f.stem}_mask.png")
    runs = []
    for data in (clean, poisoned):
        spec = TrainSpec(data=str(data), method="auto", params=dict(TINY), device="cpu")
        runs.append(load_run(train_run(spec, tmp_path / "runs")))
    a, b = (r.config["selection"] for r in runs)
    for key in ("search_seconds", "total_seconds"):
        a.pop(key), b.pop(key)
    for rows in (a["candidates"], b["candidates"]):
        for row in rows:
            row.pop("seconds")
    assert a == b
    fit_a, fit_b = (r.results["score"][r.results["role"] == "fit"] for r in runs)
    assert np.array_equal(fit_a, fit_b)


@pytest.mark.slow
def test_the_run_and_its_report_show_the_selection(tmp_path):
    from adcore.report import build_report
    from adcore.runs import load_run
    from adcore.training import TrainSpec, train_run

    data = make_tiny_mvtec(tmp_path / "set", n_train=24, n_test_good=3, n_defect=3, size=64)
    run = load_run(train_run(TrainSpec(data=str(data), method="auto", params=dict(TINY), device="cpu"),
                             tmp_path / "runs"))
    selection = run.config["selection"]
    assert len(selection["candidates"]) == len(candidate_grid()) and selection["members"]
    page = build_report(run, embedding_map=False)
    assert "How the method configured itself" in page
    for row in selection["candidates"]:
        assert row["candidate"] in page
    assert "test photos and labels are never used" in page
    # The loaded model is the one the run scored with.
    fit = run.results["role"] == "fit"
    assert run.load_method().selection_["members"] == selection["members"]
    assert np.isfinite(run.results["score"][fit]).all()


def test_members_fitted_from_the_search_features_equal_a_fit_on_the_photos(normal_images):
    """auto fits its members from the search's features instead of extracting them again: the
    memory must be the one a PatchCore fit on the same photos chooses."""
    from adcore.methods.auto import Candidate, _rows

    cand = Candidate("none", "8+16", 3)
    params = {**cand.params({"image_size": 64, "seed": 0, "batch_size": 8}), "coreset_ratio": 0.05}
    direct = build_method("patchcore", **params).fit(normal_images, FitContext(device=CPU))
    auto = Auto(**TINY)
    auto._prepare(FitContext(device=CPU))
    proto = auto._prototype(cand)
    feats = auto._extract(proto, proto._fit_images(normal_images), FitContext(device=CPU), "features")
    patches = torch.cat([_rows(auto._embed(cand, f)) for f in feats])
    reused = build_method("patchcore", **params).fit_patches(patches, len(normal_images), FitContext(device=CPU))
    torch.testing.assert_close(reused.model_.bank, direct.model_.bank, rtol=1e-5, atol=1e-5)
    probe = normal_images[:3]
    np.testing.assert_allclose(reused.predict(probe).scores, direct.predict(probe).scores, rtol=1e-5)


def test_prefix_nearest_is_the_nearest_distance_to_each_prefix_of_the_memory():
    from adcore.methods.auto import prefix_nearest
    from adcore.methods.patchcore import knn_distance

    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 16, generator=gen), torch.randn(500, 16, generator=gen)
    nearest = prefix_nearest(queries, bank, [1, 37, 37, 500])  # a size twice (tiny memories round alike)
    for k in (1, 37, 500):
        assert nearest[k].shape == (300,)
        torch.testing.assert_close(nearest[k], knn_distance(queries, bank[:k], 1))
    assert (nearest[1] >= nearest[37]).all() and (nearest[37] >= nearest[500]).all()


def test_members_that_see_photos_alike_share_one_extraction_with_the_same_results(normal_images):
    from adcore.methods.auto import _shared_predict

    grid = candidate_grid()
    members = [build_method("patchcore", **c.params({"image_size": 64, "seed": 0, "batch_size": 8}))
               .fit(normal_images[:10], FitContext(device=CPU)) for c in (grid[4], grid[6], grid[7])]  # all "none"
    probe = normal_images[10:14] + [np.ascontiguousarray(normal_images[15][:48])]  # another shape too
    for alone, shared in zip([m.predict(probe, 4) for m in members], _shared_predict(members, probe, 4)):
        np.testing.assert_allclose(shared.scores, alone.scores, rtol=1e-6)
        np.testing.assert_allclose(shared.embeddings, alone.embeddings, rtol=1e-6, atol=1e-7)
        for a, b in zip(alone.anomaly_maps, shared.anomaly_maps):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_tiled_members_that_see_photos_alike_share_one_extraction_with_the_same_results(normal_images):
    from adcore.methods.auto import _shared_tiled_predict

    grid = candidate_grid(tile_size=32)
    tiled = [c for c in grid if c.tile_size and c.normalize == "none"][:2]
    members = [build_method("patchcore", **c.params({"image_size": 32, "seed": 0, "batch_size": 8}))
               .fit(normal_images[:6], FitContext(device=CPU)) for c in tiled]
    assert all(m.config_["tile_size"] == 32 for m in members)
    probe = normal_images[10:12] + [np.ascontiguousarray(normal_images[15][:48, :56])]  # edge tiles of another size
    for alone, shared in zip([m.predict(probe, 4) for m in members], _shared_tiled_predict(members, probe, 4)):
        np.testing.assert_allclose(shared.scores, alone.scores, rtol=1e-6)
        np.testing.assert_allclose(shared.embeddings, alone.embeddings, rtol=1e-6, atol=1e-7)
        for a, b in zip(alone.anomaly_maps, shared.anomaly_maps):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def _assert_fitted_on_every_photo(member, share: float) -> None:
    """The final memory holds the 24 normal photos' patches (the kept-aside ones too) at ``share``."""
    finest = min(int(s) for s in member.config_["layers"].split("+"))
    assert member.n_patches_ == 24 * (64 // finest) ** 2
    assert member.config_["coreset_ratio"] == share
    assert len(member.model_.bank) == round(member.n_patches_ * share)


def test_memory_choose_leaves_10_percent_only_on_clear_evidence(normal_images):
    method = build_method("auto", **TINY, memory="choose").fit(normal_images, FitContext(device=CPU))
    assert len(method.selection_["memory"]) == len(method.members_)
    for memory, member in zip(method.selection_["memory"], method.members_):
        _assert_fitted_on_every_photo(member, memory["chosen share"])
        # Named as in the candidates' table, exposure normalisation included, so two members never read alike.
        assert memory["member"] in [c.label for c in candidate_grid()]
        assert f"normalise {member.config_['normalize']}" in memory["member"]
        default = next(o for o in memory["options"] if o["share"] == 0.1)
        if memory["chosen share"] != 0.1:
            assert memory["chosen share"] == memory["best on the kept-aside photos"]
            assert default["matches the best in"] is not None and default["matches the best in"] <= 0.1
        else:
            assert default["matches the best in"] is None or default["matches the best in"] > 0.1


def test_large_validation_photos_are_judged_at_a_bounded_size_and_thin_defects_survive():
    from adcore.methods.auto import JUDGED_SIDE, _shrink_mask, judged_shape

    assert judged_shape(300, 200) == (300, 200)  # small photos: as they are
    h, w = judged_shape(2048, 2448)
    assert max(h, w) == JUDGED_SIDE and abs(h / w - 2048 / 2448) < 0.01
    line = np.zeros((2048, 2448), bool)
    line[1000, 100:2000] = True  # one pixel wide
    small = _shrink_mask(line, (h, w))
    assert small.shape == (h, w) and small.any()
    rows = np.flatnonzero(small.any(1))
    assert len(rows) <= 2 and abs(rows[0] - 1000 * h / 2048) <= 1


def test_tiles_a_synthetic_defect_does_not_touch_take_the_clean_photos_maps(normal_images):
    """The search sees each tile of a defect photo that the defect leaves untouched only once (on
    the clean photo): the patch maps must be exactly those of seeing every tile."""
    from adcore.methods.auto import Candidate, _untouched_tiles, validation_set
    from adcore.tiling import tile_boxes

    clean = [np.ascontiguousarray(np.concatenate([im, im[:, ::-1]], 1)) for im in normal_images[:3]]  # 64 x 128
    v_images, kinds, _, source = validation_set(clean, 1, np.random.default_rng(0))
    auto = Auto(**TINY)
    auto._prepare(FitContext(device=CPU))
    cand = Candidate("none", "8+16", 3, tile_size=32)
    proto = auto._prototype(cand)
    banks = {cand: auto._candidate_bank(cand, auto._extract(proto, proto._fit_images(clean), FitContext(device=CPU), "f"))}
    boxes = [tile_boxes(*im.shape[:2], 32, 0.25) for im in v_images]
    seen, same_as = _untouched_tiles(v_images, boxes, source)
    assert same_as and len(seen) + len(same_as) == sum(len(b) for b in boxes)  # some tiles are reused
    every, _, _, _ = auto._validation_patch_maps(proto, [cand], banks, v_images, FitContext(device=CPU), False)
    reused, _, _, _ = auto._validation_patch_maps(proto, [cand], banks, v_images, FitContext(device=CPU), False, source)
    for a, b in zip(every[cand], reused[cand]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _hot_border_validation(rng: np.random.Generator, border: float, n: int = 24):
    """Validation maps on the position grid: clean photos' maps are noise plus ``border`` in a band along
    the edges (hotter there on every photo, as the edges of a cut-out part can be); each clean photo
    also gets a "spot" defect, a small bump inside. Returns (maps, kinds, masks, source)."""
    from adcore.methods.auto import POSITION_GRID as G

    band = np.zeros((G, G), bool)
    band[:6], band[-6:], band[:, :6], band[:, -6:] = True, True, True, True
    clean = [rng.normal(0, 1, (G, G)) + border * band * rng.uniform(0.8, 1.2) for _ in range(n)]
    maps, kinds, masks, source = list(clean), ["normal"] * n, [None] * n, list(range(n))
    for i, m in enumerate(clean):
        y, x = rng.integers(16, G - 20, 2)
        mask = np.zeros((G, G), bool)
        mask[y : y + 4, x : x + 4] = True
        maps.append(m + 2.5 * mask)
        kinds.append("spot")
        masks.append(mask)
        source.append(i)
    return np.stack(maps).astype(np.float32), np.array(kinds), masks, np.array(source)


def _position_judge(maps, kinds, masks, source):
    method = build_method("auto", **TINY)
    method._prepare(FitContext(device=CPU))
    method.selection_, method.image_members_, method.map_members_ = {}, [0], [0]
    stats = method._judge_position({0: maps}, torch.tensor([[0.0, 1.0]]), (None, kinds, masks, source))
    return method, stats


def test_per_position_scales_are_used_where_every_clean_map_is_hotter_at_the_same_places():
    from adcore.methods.auto import apply_position_np

    maps, kinds, masks, source = _hot_border_validation(np.random.default_rng(0), border=6.0)
    method, stats = _position_judge(maps, kinds, masks, source)
    table = method.selection_["position"]
    assert method.position_parts_ == table["used for"] == ["image", "pixel"], table
    assert table["image"]["per position"] > table["image"]["as is"] + 0.2
    # The kept statistics put the hot band on the interior's scale: a defect's peak is now on it.
    defect = maps[kinds == "spot"][0]
    mask = masks[int(np.flatnonzero(kinds == "spot")[0])]
    assert not mask.flat[np.argmax(defect)], "as is, the hottest place is the band"
    calibrated = apply_position_np(defect, stats[0].numpy())
    assert mask.flat[np.argmax(calibrated)]
    assert torch.equal(stats[0], stats[1]), "one member for both parts: the same statistics"


def test_per_position_scales_are_used_for_the_maps_where_they_locate_the_defects_on_a_small_hot_place():
    # A corner hot on every clean map: too small to move pixel separation (the mean inside a defect
    # among all clean pixels), but it holds the hottest pixel of every defect photo's map.
    maps, kinds, masks, source = _hot_border_validation(np.random.default_rng(2), border=0.0)
    maps[:, :2, :2] += 8.0
    method, _ = _position_judge(maps, kinds, masks, source)
    pixel = method.selection_["position"]["pixel"]
    assert pixel["located as is"] == 0.0 and pixel["located per position"] > 0.3, pixel
    assert pixel["per position"] - pixel["as is"] < 0.01, "the hot corner hardly changes pixel separation"
    assert "pixel" in method.position_parts_
    assert "synthetic defects located 0% as is" in describe_selection(method.selection_)[1]


def test_clearly_behind_counts_resamples():
    from adcore.methods.auto import clearly_behind

    # 20 of 200 resamples is "at most 10 %" (1 - 0.9 is 0.0999... in floating point).
    assert clearly_behind(20 / BOOTSTRAP, 0.9) and not clearly_behind(21 / BOOTSTRAP, 0.9)
    assert not clearly_behind(None, 0.9), "the best itself is not behind"


def test_per_position_scales_are_not_used_where_the_maps_have_no_hot_places():
    from adcore.methods.auto import identity_position

    maps, kinds, masks, source = _hot_border_validation(np.random.default_rng(1), border=0.0)
    method, stats = _position_judge(maps, kinds, masks, source)
    table = method.selection_["position"]
    assert method.position_parts_ == table["used for"] == [], table
    assert torch.equal(stats, identity_position())
    assert "Per-position scales not used" in describe_selection(method.selection_)[1]


def test_position_statistics_are_per_cell_with_the_spread_shrunk_to_the_pooled_one():
    from adcore.methods.auto import apply_position, position_stats

    rng = np.random.default_rng(0)
    grids = rng.normal(0, 1, (40, 64, 64)).astype(np.float32)
    grids[:, :, :16] = grids[:, :, :16] * 3 + 10  # a hot, noisier strip on the left
    mean, spread = position_stats(grids, prior=0.0)
    assert mean[:, 2:14].mean() == pytest.approx(10, abs=0.1) and mean[:, 18:].mean() == pytest.approx(0, abs=0.1)
    assert spread[:, 2:14].mean() == pytest.approx(3, rel=0.05) and spread[:, 18:].mean() == pytest.approx(1, rel=0.05)
    # With a prior, each cell's variance moves towards the cells' pooled variance, not the whole map's.
    _, shrunk = position_stats(grids, prior=40.0)
    pooled = np.mean(spread**2)
    assert shrunk[30, 40] ** 2 == pytest.approx((spread[30, 40] ** 2 + pooled) / 2, rel=1e-4)
    assert shrunk.max() < grids.std(), "the strip's offset does not count as spread"
    # Resized to any map size bilinearly; identity statistics change nothing.
    m = torch.rand(3, 40, 50)
    ident = torch.stack([torch.zeros(64, 64), torch.ones(64, 64)])
    assert torch.allclose(apply_position(m, ident), m)


def test_per_position_scales_score_alike_in_predict_the_exported_graph_and_after_save_load(normal_images):
    from adcore.methods.auto import apply_position, position_stats, to_grid
    from adcore.onnx_export import ExportGraph

    method, calibration = _two_members(normal_images)
    probe = textured(np.random.default_rng(9), 64)
    probe[20:30, 20:30] = 250
    plain = method.predict([probe])
    # Statistics of made-up maps with a hot corner, used for both parts.
    hot = np.stack([to_grid(m) for m in method.members_[0].predict(calibration).anomaly_maps])
    hot[:, :8, :8] += 5
    stats = torch.from_numpy(np.stack([position_stats(hot), position_stats(hot)]))
    method.position_parts_ = ["image", "pixel"]
    method.selection_["position"] = {"used for": ["image", "pixel"], "reason": "set by the test"}
    method.model_ = method._new_model(method.model_.calibration, stats)
    got = method.predict([probe])
    expected_map = apply_position(torch.from_numpy(plain.anomaly_maps[0]), stats[1]).numpy()
    assert np.allclose(got.anomaly_maps[0], expected_map, atol=1e-5)
    image_map = apply_position(torch.from_numpy(method.members_[0].predict([probe]).anomaly_maps[0]), stats[0])
    assert got.scores[0] == pytest.approx(float(image_map.max()), rel=1e-5)
    assert got.scores[0] != pytest.approx(plain.scores[0], rel=1e-3)
    # The exported graph (what ONNX traces) computes the same.
    (_, x), = method.members_[0]._shaped_batches([probe], 1)
    score, heat = ExportGraph(method.inference_module().eval())(x, torch.zeros(64, 64))
    assert float(score[0]) == pytest.approx(got.scores[0], rel=1e-4)
    assert np.allclose(heat[0].detach().numpy(), got.anomaly_maps[0], atol=1e-4)
    # Saved and loaded: the same; a state saved before per-position scales loads and scores as before.
    loaded = build_method("auto", **TINY).load_state_dict(method.state_dict(), CPU)
    again = loaded.predict([probe])
    assert np.array_equal(again.scores, got.scores) and np.array_equal(again.anomaly_maps[0], got.anomaly_maps[0])
    method.position_parts_ = []
    del method.selection_["position"]  # as saved before per-position scales
    method.model_ = method._new_model(method.model_.calibration)
    old = {k: v for k, v in method.state_dict().items() if k != "position"}
    before = build_method("auto", **TINY).load_state_dict(old, CPU).predict([probe])
    assert np.array_equal(before.scores, plain.scores) and np.array_equal(before.anomaly_maps[0], plain.anomaly_maps[0])
