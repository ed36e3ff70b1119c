"""Embedding scorers: one direction (higher = more anomalous), sklearn-backed maths, rescoring runs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from sklearn.metrics import roc_auc_score

from adcore.scoring import SCORERS, build_scorer, pixel_auroc, rescore_run


def _normal_and_tests(seed: int = 0, dim: int = 12):
    """Normal embeddings around a positive mean (so cosine has a direction to compare), fresh
    inliers from the same distribution, and one outlier that differs in length and direction."""
    rng = np.random.default_rng(seed)
    mean = np.full(dim, 3.0)
    normal = mean + rng.normal(size=(300, dim))
    inliers = mean + rng.normal(size=(20, dim))
    outlier = mean.copy()
    outlier[:4] = [-9.0, 12.0, -9.0, 12.0]
    return normal, inliers, outlier[None]


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_ranks_an_obvious_outlier_above_the_inliers(name):
    normal, inliers, outlier = _normal_and_tests()
    scorer = build_scorer(name).fit(normal)
    scores = scorer.score(np.vstack([inliers, outlier]))
    assert scores.shape == (21,) and scores.dtype == np.float64
    assert scores[-1] > scores[:-1].max(), f"{name}: outlier {scores[-1]:.3g} vs inliers max {scores[:-1].max():.3g}"


def test_registry_names_and_every_param_has_help():
    assert set(SCORERS.names()) >= {
        "centroid_euclidean", "centroid_cosine", "knn", "gaussian", "gmm", "kde", "ocsvm", "iforest"
    }
    for name in SCORERS.names():
        entry = SCORERS.get(name)
        assert entry.help
        for p in entry.params:
            assert p.help and p.validate(p.default) == p.default


@pytest.mark.parametrize("standardize", [False, True])
def test_gaussian_is_mahalanobis_with_ledoit_wolf_covariance(standardize):
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6)) * [1, 10, 0.1, 1, 5, 2] + 4
    x = rng.normal(size=(7, 6)) * 3

    if standardize:
        mean, std = normal.mean(0), normal.std(0)
        fit_on, query = (normal - mean) / std, (x - mean) / std
    else:
        fit_on, query = normal, x
    lw = LedoitWolf().fit(fit_on)
    diff = query - fit_on.mean(0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(lw.covariance_), diff))

    scorer = build_scorer("gaussian", standardize=standardize).fit(normal)
    np.testing.assert_allclose(scorer.score(x), expected, rtol=1e-6)
    # The raw-space location and precision (what the pretrained_gaussian method stores) agree.
    d = x - scorer.location_
    np.testing.assert_allclose(np.sqrt(np.einsum("ij,jk,ik->i", d, scorer.precision_, d)), expected, rtol=1e-6)


def test_knn_is_the_mean_distance_to_the_k_nearest_normals():
    rng = np.random.default_rng(2)
    normal, x = rng.normal(size=(50, 3)), rng.normal(size=(4, 3))
    dist = np.linalg.norm(x[:, None] - normal[None], axis=2)
    expected = np.sort(dist, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(build_scorer("knn", k=3, standardize=False).fit(normal).score(x), expected)


def test_model_selection_happens_on_the_normal_data():
    rng = np.random.default_rng(3)
    two_blobs = np.vstack([rng.normal(-6, 1, (150, 2)), rng.normal(6, 1, (150, 2))])
    gmm = build_scorer("gmm", pca_dims=0).fit(two_blobs)
    assert gmm.n_components_ >= 2  # BIC prefers two components to one for two blobs
    kde = build_scorer("kde", pca_dims=0).fit(two_blobs)
    assert 0 < kde.bandwidth_ < 1.0  # in standardised units; the blobs are ~1/6 of the spread wide


def test_clear_errors():
    normal, inliers, _ = _normal_and_tests()
    with pytest.raises(ValueError, match=r"unknown scorer 'nope'; known: .*gaussian"):
        build_scorer("nope")
    with pytest.raises(ValueError, match=r"scorer 'knn': k: 0 is below the minimum 1"):
        build_scorer("knn", k=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        build_scorer("knn").score(inliers)
    with pytest.raises(ValueError, match="fitted on 12"):
        build_scorer("gaussian").fit(normal).score(inliers[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        build_scorer("gaussian").fit(np.full((5, 2), np.nan))


class FakeRun:
    """A finished run as the pages see it: results only; touching the method is a test failure."""

    run_id = "fake-run"

    def __init__(self, results):
        self.results = results

    def load_method(self, *args, **kwargs):
        raise AssertionError("rescoring must not load (or retrain) the network")


def test_rescore_uses_stored_embeddings_fitted_on_the_fit_rows_only():
    normal, inliers, outlier = _normal_and_tests()
    embeddings = np.vstack([normal, inliers, outlier]).astype(np.float32)
    role = np.array(["fit"] * 250 + ["holdout"] * 50 + ["test"] * 21)
    run = FakeRun({"embedding": embeddings, "role": role, "score": np.zeros(len(role))})

    scores = rescore_run(run, "knn", k=3)

    assert scores.shape == (len(role),)
    expected = build_scorer("knn", k=3).fit(embeddings[:250]).score(embeddings)
    np.testing.assert_allclose(scores, expected)
    assert scores[-1] == scores.max()
    with pytest.raises(ValueError, match="no embeddings"):
        rescore_run(FakeRun({"role": role, "score": np.zeros(len(role))}), "knn")


def test_pixel_auroc_counts_every_pixel_the_same_whatever_the_photo_size():
    # A large photo whose defect (top half) scores 0.4 above its normal half at 0, and a small normal
    # photo scoring 0.5 everywhere. At full resolution the large photo's 32768 normal pixels outrank
    # the defect and only the small photo's 1024 do not: AUROC 32768 / 33792. Shrinking each photo to
    # the same side for speed must not let the small photo weigh as much as the large one (0.33).
    big_map = np.zeros((256, 256), np.float32)
    big_map[:128] = 0.4
    big_mask = np.zeros((256, 256), bool)
    big_mask[:128] = True
    small_map = np.full((32, 32), 0.5, np.float32)
    small_mask = np.zeros((32, 32), bool)
    full = roc_auc_score(np.r_[big_mask.ravel(), small_mask.ravel()], np.r_[big_map.ravel(), small_map.ravel()])
    assert full == pytest.approx(32768 / 33792)
    assert pixel_auroc([big_map, small_map], [big_mask, small_mask], max_side=16) == pytest.approx(full, abs=1e-3)
    assert pixel_auroc([big_map, small_map], [big_mask, small_mask], max_side=512) == pytest.approx(full)
    # A photo without ground truth is left out; no defect pixel at all gives None.
    assert pixel_auroc([big_map, small_map], [big_mask, None], max_side=16) == pytest.approx(1.0)
    assert pixel_auroc([small_map], [small_mask]) is None


# -- per-region overlap and hit rate ---------------------------------------------------------------

def _pro_case():
    """Two defect regions (A: 2 pixels, B: 1 pixel) and three defect-free pixels, one of them hot."""
    amap = np.array([[0.9, 0.7, 0.6], [0.8, 0.1, 0.3]], dtype=np.float32)
    mask = np.array([[True, False, True], [True, False, False]])
    return amap, mask


def test_pixel_pro_matches_the_hand_computed_curve():
    from adcore.scoring import pixel_pro

    amap, mask = _pro_case()
    # Thresholds from the top: 0.9 -> (FPR 0, PRO 1/4), 0.8 -> (0, 1/2), 0.7 (defect-free) -> (1/3, 1/2),
    # 0.6 -> (1/3, 1), 0.3 -> (2/3, 1). Up to FPR 0.3 the curve is 1/2: area 0.15, normalised 0.5.
    assert pixel_pro([amap], [mask]) == pytest.approx(0.5)
    # Up to FPR 0.5: 1/2 * 1/3 + 1 * (0.5 - 1/3) = 1/3, normalised 2/3.
    assert pixel_pro([amap], [mask], max_fpr=0.5) == pytest.approx(2 / 3)


def test_pixel_pro_counts_each_region_the_same_and_skips_images_without_truth():
    from adcore.scoring import pixel_pro

    amap, mask = _pro_case()
    big = np.zeros((6, 6), bool)
    big[:4, :4] = True  # a large region found perfectly
    big_map = np.where(big, 5.0, 0.0).astype(np.float32)
    # A third region found at FPR 0 raises the mean overlap at every threshold.
    with_big = pixel_pro([amap, big_map], [mask, big], max_fpr=0.5)
    assert with_big > pixel_pro([amap], [mask], max_fpr=0.5)
    assert pixel_pro([amap, amap], [mask, None]) == pytest.approx(0.5)
    assert pixel_pro([amap], [np.zeros_like(mask)]) is None


def test_pixel_pro_perfect_random_and_inverted_maps():
    from adcore.scoring import pixel_pro

    rng = np.random.default_rng(0)
    masks = [np.zeros((60, 60), bool) for _ in range(3)]
    masks[0][5:20, 5:20] = True
    masks[1][30:34, 10:50] = True
    noise = [rng.random((60, 60)).astype(np.float32) for _ in masks]
    assert pixel_pro([n + 2 * m for n, m in zip(noise, masks)], masks) == pytest.approx(1.0)
    assert pixel_pro([-(n + 2 * m) for n, m in zip(noise, masks)], masks) == pytest.approx(0.0)
    # A map unrelated to the defects: PRO(FPR) ~ FPR, so the normalised area is about 0.15.
    assert pixel_pro(noise, masks) == pytest.approx(0.15, abs=0.05)


def test_hit_rate_hand_computed():
    from adcore.scoring import hit_rate

    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    inside, near, far, clean = (np.zeros((20, 20), np.float32) for _ in range(4))
    inside[9, 10] = 1.0  # hottest pixel on the defect: a hit
    near[9, 14] = 1.0  # 3 px right of the mask (columns 8..11): inside the 3 px dilation, a hit
    far[9, 16] = 1.0  # 5 px away: a miss
    clean[0, 0] = 1.0  # a defect-free image is not counted
    no_defect = np.zeros((20, 20), bool)
    assert hit_rate([inside, near, far, clean], [mask, mask, mask, no_defect]) == pytest.approx(2 / 3)
    assert hit_rate([near], [mask], dilation=0) == 0.0
    assert hit_rate([clean], [no_defect]) is None
    # Per image, as auto's selection reads it: NaN where there is no defect to find.
    from adcore.scoring import hits

    assert np.array_equal(hits([inside, near, far, clean], [mask, mask, mask, None]), [1, 1, 0, np.nan], equal_nan=True)


def test_hit_rate_resizes_the_mask_to_the_map():
    from adcore.scoring import hit_rate

    mask = np.zeros((40, 40), bool)
    mask[20:28, 4:12] = True  # at the map's 20x20 resolution: rows 10..13, columns 2..5
    amap = np.zeros((20, 20), np.float32)
    amap[11, 3] = 1.0
    assert hit_rate([amap], [mask], dilation=0) == 1.0
    amap[11, 3], amap[2, 15] = 0.0, 1.0
    assert hit_rate([amap], [mask]) == 0.0
