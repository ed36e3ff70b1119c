"""Few-shot difference-histogram classifier: features, cross-validation over images, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from adcore.cli import main as cli_main
from adcore.fewshot import cross_validate, histogram_features
from adcore.training import TrainSpec, train_run
from tests.helpers import make_tiny_mvtec


def _results(n_normal=20, n_defect=10, n_fit=5, seed=0):
    """A run's results as in results.npz: defects have a hot spot in their map."""
    rng = np.random.default_rng(seed)
    n = n_fit + n_normal + n_defect
    maps = rng.normal(0, 1, (n, 16, 16))
    labels = ["good"] * (n_fit + n_normal) + ["spot"] * n_defect
    for i in range(n_fit + n_normal, n):
        y, x = rng.integers(0, 12, 2)
        maps[i, y : y + 4, x : x + 4] += 4
    return {
        "rel_path": np.array([f"img{i:03d}.png" for i in range(n)]),
        "role": np.array(["fit"] * n_fit + ["test"] * (n_normal + n_defect)),
        "split": np.array(["train"] * n_fit + ["test"] * (n_normal + n_defect)),
        "label": np.array(labels),
        "score": rng.normal(0, 1, n),
        "anomaly_map": maps.astype(np.float16),
    }


def test_histogram_features_are_fractions_per_bin_plus_summary():
    maps = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    feats = histogram_features(maps, np.array([0.0, 1.5]))
    assert feats.shape == (1, 5)
    assert feats[0, :2].tolist() == [0.5, 0.5]
    assert feats[0, 3:].tolist() == [3.0, 1.5]  # max, mean


def test_cross_validation_never_scores_an_image_with_a_forest_fitted_on_it(monkeypatch):
    import sklearn.ensemble

    results = _results()
    fitted_rows, scored_rows = [], []
    real = sklearn.ensemble.RandomForestClassifier

    class Spy(real):
        def fit(self, X, y):
            fitted_rows.append({tuple(np.round(r, 6)) for r in X})
            return super().fit(X, y)

        def predict_proba(self, X):
            scored_rows.append({tuple(np.round(r, 6)) for r in X})
            return super().predict_proba(X)

    monkeypatch.setattr(sklearn.ensemble, "RandomForestClassifier", Spy)
    out = cross_validate(results, folds=5)
    assert len(out.folds) == 5 and len(fitted_rows) == 5
    for fold, fit_rows, held_rows in zip(out.folds, fitted_rows, scored_rows):
        assert not set(fold["fit_index"]) & set(fold["scored_index"])
        assert not fit_rows & held_rows  # feature rows too: nothing scored was fitted on
        assert fold["defects_scored"] >= 1
    scored = np.concatenate([f["scored_index"] for f in out.folds])
    assert sorted(scored) == list(range(5, 35))  # every labelled image once; the fit images never
    assert (out.fold >= 0).all() and len(out.scores) == 30


def test_cross_validation_learns_hot_spots_and_not_noise():
    out = cross_validate(_results(), trees=50)
    assert out.image_auroc > 0.9 and out.image_aupr > 0.8
    shuffled = _results()
    rng = np.random.default_rng(1)
    test = shuffled["role"] == "test"
    shuffled["anomaly_map"][test] = rng.normal(0, 1, shuffled["anomaly_map"][test].shape)  # no signal left
    assert cross_validate(shuffled, trees=50).image_auroc < 0.8


def test_too_few_defects_or_no_maps_give_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 3 labelled defect .* this run has 2 defect and 20 normal"):
        cross_validate(_results(n_defect=2))
    no_maps = _results()
    del no_maps["anomaly_map"]
    with pytest.raises(ValueError, match="no anomaly maps"):
        cross_validate(no_maps)


def test_cli_prints_the_cross_validation_table(tmp_path, capsys):
    data = make_tiny_mvtec(tmp_path / "set", n_test_good=4, n_defect=4)
    run = train_run(
        TrainSpec(data=str(data), method="autoencoder", params={"image_size": 32, "epochs": 2, "width": 8}),
        tmp_path / "runs",
    )
    assert cli_main(["fewshot", "--run", str(run), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "all (out-of-fold)" in out and "AUROC" in out and out.count("\n") >= 6
    assert cli_main(["fewshot", "--run", str(tmp_path / "nope")]) == 2
