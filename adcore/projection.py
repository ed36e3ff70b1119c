"""2-D / 3-D maps of image embeddings (t-SNE or UMAP) for the explore page, cached in the run folder.

Embeddings are (N, D) float arrays, one row per image of ``run.results``. Every map is computed the
same way: standardise each feature, PCA to at most 50 dimensions (t-SNE and UMAP are slow and noisy
in many dimensions), then t-SNE (scikit-learn) or UMAP (umap-learn), single-threaded and seeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from adcore.threshold import run_tables

if TYPE_CHECKING:  # adcore.runs imports torch; these functions only read run.path and run.results
    from adcore.runs import Run

METHODS = ("tsne", "umap")
PCA_DIMS = 50
EXACT_TSNE_MAX = 500  # up to this many images exact t-SNE is faster than Barnes-Hut (and exact)
MIN_IMAGES = 4  # below this neither method is meaningful: the map shows principal components
CACHE_FOLDER = "cache"
NORMAL_GROUPS = ("train normal", "hold-out normal", "test normal")


@dataclass(frozen=True)
class ProjectionSettings:
    """The settings a map is really computed with for n images, and notes on any that were changed."""

    method: str
    dims: int
    perplexity: float | None  # t-SNE only
    n_neighbors: int | None  # UMAP only
    seed: int
    notes: tuple[str, ...] = ()


def projection_settings(
    n: int,
    method: str = "tsne",
    dims: int = 2,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> ProjectionSettings:
    """Validate the settings and adapt them to n images; the page shows the returned ``notes``."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; known: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise ValueError(f"a map has 2 or 3 dimensions, got {dims}")
    if perplexity <= 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")
    if n < MIN_IMAGES:
        note = f"Only {n} image(s): showing principal components instead of {_title(method)}."
        return ProjectionSettings("pca", dims, None, None, seed, (note,) if n else ())
    notes = []
    if method == "tsne":
        # t-SNE needs perplexity < n; below n/3 each point still has a few real neighbours.
        limit = max(1.0, (n - 1) / 3)
        if perplexity > limit:
            notes.append(
                f"Perplexity lowered from {perplexity:g} to {limit:.3g}: it must stay below a third of the {n} images."
            )
            perplexity = limit
        return ProjectionSettings(method, dims, float(perplexity), None, seed, tuple(notes))
    if n_neighbors > n - 1:
        notes.append(f"Neighbours lowered from {n_neighbors} to {n - 1}: there are only {n} images.")
        n_neighbors = n - 1
    return ProjectionSettings(method, dims, None, int(n_neighbors), seed, tuple(notes))


def project(
    embeddings: np.ndarray,
    method: str = "tsne",
    dims: int = 2,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
    cache_key: str = "",
) -> np.ndarray:
    """(N, D) embeddings -> (N, dims) float32 map coordinates.

    With ``cache_dir`` the result is stored there under a name derived from ``cache_key`` (say, the
    run), the embeddings' bytes, the settings and the library version, and reused when all match.
    A cache folder that cannot be written (read-only run store) just means no caching.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    settings = projection_settings(len(x), method, dims, perplexity, n_neighbors, seed)
    path = _cache_path(Path(cache_dir), x, settings, cache_key) if cache_dir is not None else None
    if path is not None:
        cached = _read_cached(path, (len(x), dims))
        if cached is not None:
            return cached
    coords = _fit_projection(x, settings)
    if path is not None:
        _write_cached(path, coords)
    return coords


# The map the Embeddings page opens with; training computes it and stores it with the run.
DEFAULT_MAP = {"method": "tsne", "dims": 2, "perplexity": 30.0, "n_neighbors": 15, "seed": 0}
DEFAULT_MAP_KEY = "default_map"  # its (N, 2) float32 coordinates in a run's results


def default_map(embeddings: np.ndarray) -> np.ndarray:
    """The ``DEFAULT_MAP`` of (N, D) embeddings: (N, 2) float32, what training stores with a run."""
    return project(embeddings, **DEFAULT_MAP)


def project_run(
    run: Run,
    method: str = "tsne",
    dims: int = 2,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """The map of every row of a run (same order as ``run.results``): the one stored with the run
    when these are the default settings, else computed and cached in ``run.path/cache/``."""
    if "embedding" not in run.results:
        raise ValueError(f"run {run.run_id} has no embeddings: its method does not produce them")
    n = len(run.results["embedding"])
    stored = run.results.get(DEFAULT_MAP_KEY)
    asked = projection_settings(n, method, dims, perplexity, n_neighbors, seed)
    if stored is not None and len(stored) == n and asked == projection_settings(n, **DEFAULT_MAP):
        return stored
    return project(
        run.results["embedding"],
        method,
        dims,
        perplexity,
        n_neighbors,
        seed,
        cache_dir=Path(run.path) / CACHE_FOLDER,
        cache_key=str(Path(run.path).resolve()),
    )


def map_groups(run: Run) -> np.ndarray:
    """One legend group per row of the run: "train normal", "hold-out normal", "test normal", each
    defect class, "synthetic cutpaste", "synthetic scar" (rows of an unknown role keep the role)."""
    tables = run_tables(run)
    groups = np.array(run.results["role"], dtype=object)
    for name, rows in zip(NORMAL_GROUPS, (tables.fit_normal, tables.holdout_normal, tables.test_normal)):
        groups[rows] = name
    for name, rows in {**tables.test_defects, **tables.synthetic}.items():
        groups[rows] = name
    return groups.astype(str)


def group_order(groups: np.ndarray) -> list[str]:
    """Legend order: normal groups, then defect classes (sorted), then synthetic kinds."""
    present = set(np.asarray(groups).tolist())
    normals = [g for g in NORMAL_GROUPS if g in present]
    synthetic = sorted(g for g in present if g.startswith("synthetic "))
    defects = sorted(present - set(normals) - set(synthetic))
    return normals + defects + synthetic


def score_history(run: Run) -> dict[str, np.ndarray] | None:
    """Per-epoch score distributions recorded during training, in long form for plotting.

    Reads history events that carry ``"scores": {group: [score, ...]}`` (for instance the hold-out
    normals and synthetic defects scored after each epoch) and returns ``{"epoch", "group",
    "score"}`` arrays of equal length; None when the run recorded no such events.
    """
    epochs, groups, values = [], [], []
    for event in run.history:
        recorded = event.get("scores")
        if not isinstance(recorded, dict):
            continue
        epoch = event.get("epoch", event.get("step"))
        for group, scores in recorded.items():
            scores = np.asarray(scores, dtype=np.float64).ravel()
            epochs.extend([epoch] * scores.size)
            groups.extend([str(group)] * scores.size)
            values.append(scores)
    if not values:
        return None
    return {
        "epoch": np.asarray(epochs),
        "group": np.asarray(groups, dtype=str),
        "score": np.concatenate(values),
    }


# --- computing ------------------------------------------------------------------------------------


def _fit_projection(x: np.ndarray, settings: ProjectionSettings) -> np.ndarray:
    n = len(x)
    if n <= 1:
        return np.zeros((n, settings.dims), dtype=np.float32)
    z = StandardScaler().fit_transform(x.astype(np.float64))
    if settings.method == "pca":
        keep = min(settings.dims, n, z.shape[1])
        out = np.zeros((n, settings.dims))
        out[:, :keep] = PCA(n_components=keep, random_state=settings.seed).fit_transform(z)
        return out.astype(np.float32)
    if z.shape[1] > PCA_DIMS:
        z = PCA(n_components=min(PCA_DIMS, n), random_state=settings.seed).fit_transform(z)
    if settings.method == "tsne":
        from sklearn.manifold import TSNE

        out = TSNE(
            n_components=settings.dims,
            perplexity=settings.perplexity,
            method="exact" if n <= EXACT_TSNE_MAX else "barnes_hut",
            init="pca",
            learning_rate="auto",
            random_state=settings.seed,
            n_jobs=1,
        ).fit_transform(z)
    else:
        import umap  # slow to import and to compile on first use: only when a UMAP map is asked for

        out = umap.UMAP(
            n_components=settings.dims,
            n_neighbors=settings.n_neighbors,
            # the spectral start needs more images than dimensions + 1 (it fails on 4 images in 3-D)
            init="spectral" if n > settings.dims + 2 else "random",
            random_state=settings.seed,
            n_jobs=1,
        ).fit_transform(z)
    return np.asarray(out, dtype=np.float32)


# --- the cache ------------------------------------------------------------------------------------


def _cache_path(folder: Path, x: np.ndarray, settings: ProjectionSettings, cache_key: str) -> Path:
    library = {"tsne": "scikit-learn", "umap": "umap-learn", "pca": "scikit-learn"}[settings.method]
    try:
        library_version = version(library)
    except PackageNotFoundError:
        library_version = "unknown"
    header = {
        "key": cache_key,
        "settings": {k: v for k, v in asdict(settings).items() if k != "notes"},
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "library": [library, library_version],
        "pca_dims": PCA_DIMS,
        "exact_tsne_max": EXACT_TSNE_MAX,
    }
    digest = hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(x).data)
    return folder / f"projection-{settings.method}-{settings.dims}d-{digest.hexdigest()}.npy"


def _read_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        coords = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent, unreadable or half-written by someone else: compute again
    return coords if coords.shape == shape else None


def _write_cached(path: Path, coords: np.ndarray) -> None:
    """Write-then-rename, so a reader never sees half a file; any failure just skips the cache."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, coords, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _title(method: str) -> str:
    return {"tsne": "t-SNE", "umap": "UMAP"}[method]
