"""Embedding maps: t-SNE / UMAP shapes, small sets, the on-disk cache, legend groups, score history."""

from __future__ import annotations

import numpy as np
import pytest

from adcore import projection
from adcore.projection import group_order, map_groups, project, project_run, projection_settings, score_history
from adcore.runs import Run


def fake_run(tmp_path, n_per_group: int = 4, dim: int = 64, history: list | None = None) -> Run:
    """A run with every kind of row and random embeddings; no training involved."""
    groups = [
        ("fit", "good"),
        ("holdout", "good"),
        ("test", "good"),
        ("test", "scratch"),
        ("synthetic", "synthetic cutpaste"),
        ("synthetic", "synthetic cutpaste scar"),
    ]
    role = np.repeat([g[0] for g in groups], n_per_group)
    label = np.repeat([g[1] for g in groups], n_per_group)
    rng = np.random.default_rng(0)
    n = role.size
    results = {
        "rel_path": np.array([f"img{i:03d}.png" for i in range(n)]),
        "split": np.where(role == "test", "test", "train"),
        "label": label,
        "role": role,
        "score": rng.normal(size=n),
        "embedding": rng.normal(size=(n, dim)).astype(np.float32),
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return Run(path=run_dir, config={"method": "fake", "params": {}}, history=history or [], results=results)


@pytest.fixture()
def count_fits(monkeypatch):
    """Replaces the (slow) map computation by a cheap seeded stand-in and counts its calls."""
    calls = []

    def counting(x, settings):
        calls.append(settings)
        rng = np.random.default_rng(settings.seed)
        return (x[:, : settings.dims] + rng.normal(size=(len(x), settings.dims))).astype(np.float32)

    monkeypatch.setattr(projection, "_fit_projection", counting)
    return calls


def test_tsne_map_in_3d():
    x = np.random.default_rng(1).normal(size=(24, 80))  # > 50 features: goes through PCA first
    coords = project(x, "tsne", 3, perplexity=5)
    assert coords.shape == (24, 3) and coords.dtype == np.float32 and np.isfinite(coords).all()


@pytest.mark.slow  # UMAP compiles itself with numba on first use: ~20 s of CPU, once per process
def test_umap_map_shapes():
    x = np.random.default_rng(2).normal(size=(20, 16))
    for dims in (2, 3):
        coords = project(x, "umap", dims, n_neighbors=5)
        assert coords.shape == (20, dims) and np.isfinite(coords).all()


def test_small_sets_lower_perplexity_with_a_note():
    settings = projection_settings(10, "tsne", perplexity=30)
    assert settings.perplexity == 3.0 < 10 / 3
    assert settings.notes == ("Perplexity lowered from 30 to 3: it must stay below a third of the 10 images.",)
    assert projection_settings(200, "tsne", perplexity=30).notes == ()
    assert projection_settings(6, "umap", n_neighbors=15).n_neighbors == 5
    coords = project(np.random.default_rng(3).normal(size=(10, 8)), "tsne", 2, perplexity=30)  # the 2-D case
    assert coords.shape == (10, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()


def test_tiny_sets_show_principal_components():
    settings = projection_settings(3, "umap", dims=3)
    assert settings.method == "pca" and "Only 3 image(s)" in settings.notes[0]
    x = np.random.default_rng(4).normal(size=(3, 8))
    assert project(x, "umap", 3).shape == (3, 3)  # no UMAP import or compile for 3 images
    assert project(x[:1], "tsne").shape == (1, 2)
    assert project(x[:0], "tsne").shape == (0, 2)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown projection 'pca3'; known: tsne, umap"):
        projection_settings(10, "pca3")
    with pytest.raises(ValueError, match="2 or 3 dimensions"):
        projection_settings(10, "tsne", dims=4)
    with pytest.raises(ValueError, match=r"must be \(N, D\)"):
        project(np.zeros(5))


def test_cache_hit_returns_the_same_map_without_recomputing(tmp_path, count_fits):
    run = fake_run(tmp_path)
    first = project_run(run, "tsne", 2, perplexity=5)
    again = project_run(run, "tsne", 2, perplexity=5)
    assert len(count_fits) == 1
    np.testing.assert_array_equal(first, again)
    assert len(list((run.path / "cache").glob("projection-tsne-2d-*.npy"))) == 1
    project_run(run, "tsne", 2, perplexity=5, seed=1)  # other settings: another map
    run.results["embedding"] = run.results["embedding"] + 1.0  # other embeddings: another map
    project_run(run, "tsne", 2, perplexity=5)
    assert len(count_fits) == 3
    assert not list((run.path / "cache").glob(".tmp-*"))  # nothing half-written left behind


def test_a_broken_cache_file_is_recomputed(tmp_path, count_fits):
    run = fake_run(tmp_path)
    first = project_run(run, "tsne", 2, perplexity=5)
    (cached,) = (run.path / "cache").glob("*.npy")
    cached.write_bytes(b"not an array")
    np.testing.assert_array_equal(project_run(run, "tsne", 2, perplexity=5), first)
    assert len(count_fits) == 2


def test_unwritable_cache_folder_means_no_cache_not_a_crash(tmp_path, count_fits):
    run = fake_run(tmp_path)
    (run.path / "cache").write_text("a file where the cache folder should be")  # works even as root
    a = project_run(run, "tsne", 2, perplexity=5)
    b = project_run(run, "tsne", 2, perplexity=5)
    np.testing.assert_array_equal(a, b)
    assert len(count_fits) == 2
    assert (run.path / "cache").is_file()


def test_run_without_embeddings_says_so(tmp_path):
    run = fake_run(tmp_path)
    del run.results["embedding"]
    with pytest.raises(ValueError, match="has no embeddings"):
        project_run(run)


def test_map_groups_name_every_kind_of_row(tmp_path):
    groups = map_groups(fake_run(tmp_path, n_per_group=2))
    assert groups.tolist() == [
        "train normal", "train normal",
        "hold-out normal", "hold-out normal",
        "test normal", "test normal",
        "scratch", "scratch",
        "synthetic cutpaste", "synthetic cutpaste",
        "synthetic scar", "synthetic scar",
    ]
    assert group_order(groups) == [
        "train normal", "hold-out normal", "test normal", "scratch", "synthetic cutpaste", "synthetic scar",
    ]


def test_score_history_in_long_form_or_none(tmp_path):
    assert score_history(fake_run(tmp_path, history=[{"epoch": 1, "loss": 0.3}])) is None
    history = [
        {"epoch": 1, "loss": 0.3, "scores": {"holdout": [0.1, 0.2], "synthetic": [0.9]}},
        {"epoch": 2, "loss": 0.2},
        {"epoch": 2, "loss": 0.1, "scores": {"holdout": [0.05]}},
    ]
    table = score_history(fake_run(tmp_path, history=history))
    assert table["epoch"].tolist() == [1, 1, 1, 2]
    assert table["group"].tolist() == ["holdout", "holdout", "synthetic", "holdout"]
    assert table["score"].tolist() == [0.1, 0.2, 0.9, 0.05]


def test_a_map_stored_with_the_run_opens_at_once_for_the_default_settings(tmp_path, count_fits):
    run = fake_run(tmp_path)
    run.results[projection.DEFAULT_MAP_KEY] = projection.default_map(run.results["embedding"])
    assert len(count_fits) == 1  # computed once, as training does
    stored = run.results[projection.DEFAULT_MAP_KEY]
    assert stored.shape == (len(run.results["score"]), 2)
    assert project_run(run) is stored
    assert project_run(run, n_neighbors=40) is stored  # a UMAP-only setting does not change a t-SNE
    assert len(count_fits) == 1
    other = project_run(run, perplexity=5)
    assert len(count_fits) == 2 and other is not stored
