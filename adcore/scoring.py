"""Metrics on raw anomaly scores and maps (higher = more anomalous everywhere), with scikit-learn."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adcore.registry import Entry, Param, Registry, validate_params


def image_metrics(scores: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float | None]:
    """Image AUROC, AUPR and best F1 over thresholds; None where one class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    if y.all() or not y.any():
        return {"image_auroc": None, "image_aupr": None, "image_f1_max": None}
    precision, recall, _ = precision_recall_curve(y, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return {
        "image_auroc": float(roc_auc_score(y, scores)),
        "image_aupr": float(average_precision_score(y, scores)),
        "image_f1_max": float(f1.max()),
    }


def pixel_auroc(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], max_side: int = 128
) -> float | None:
    """Pixel AUROC over all images that have a mask (normal images count as all-normal pixels).

    Every pixel of every photo counts the same, as at full resolution. For speed, maps and masks are
    compared at most ``max_side`` pixels on the long side, and each compared pixel is weighted by the
    number of original pixels it stands for, so a large photo weighs what its pixels weigh, not what a
    small one does. ``masks[i]`` is None for an image without ground truth, which is left out unless
    it is normal (pass an all-False mask for normal images).
    """
    values, labels, weights = [], [], []
    for amap, mask in zip(maps, masks):
        if mask is None:
            continue
        m, g, weight = _compared(amap, mask, max_side)
        values.append(m.ravel())
        labels.append(g.ravel())
        weights.append(np.full(g.size, weight))
    if not labels:
        return None
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.concatenate(values), sample_weight=np.concatenate(weights)))


def _compared(amap: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A map and its mask at most ``max_side`` pixels on the long side (bilinear / nearest), and the
    number of original pixels each compared pixel stands for."""
    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    m = np.asarray(Image.fromarray(np.asarray(amap, dtype=np.float32)).resize(size, Image.BILINEAR))
    g = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return m, g, h * w / g.size


def pixel_pro(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    max_fpr: float = 0.3,
    max_side: int = 128,
) -> float | None:
    """Area under the per-region-overlap curve up to ``max_fpr`` false-positive rate, divided by
    ``max_fpr`` (so 1.0 is perfect), as in the MVTec AD evaluation (Bergmann et al., 2021).

    Each connected defect region of the masks (4-connected) counts the same, however small: PRO at a
    threshold is the mean over regions of the share of the region's pixels at or above it. The
    false-positive rate is the share of all defect-free pixels (of every image with ground truth) at
    or above it, each weighted by the original pixels it stands for, as in ``pixel_auroc``. The curve
    runs through every distinct map value as a threshold and is integrated by trapezoids, cut at
    ``max_fpr`` by linear interpolation. None without any defect region or any defect-free pixel.
    """
    from scipy import ndimage

    values, fp_weight, overlap_weight = [], [], []
    n_regions = 0
    per_region: list[tuple[np.ndarray, int]] = []
    for amap, mask in zip(maps, masks):
        if mask is None:
            continue
        m, g, weight = _compared(amap, mask, max_side)
        values.append(m[~g])
        fp_weight.append(np.full(int((~g).sum()), weight))
        overlap_weight.append(np.zeros(int((~g).sum())))
        labelled, count = ndimage.label(g)
        for k in range(1, count + 1):
            per_region.append((m[labelled == k], int((labelled == k).sum())))
        n_regions += count
    if not n_regions or not sum(len(v) for v in values):
        return None
    for region_values, size in per_region:
        values.append(region_values)
        fp_weight.append(np.zeros(size))
        overlap_weight.append(np.full(size, 1.0 / (n_regions * size)))
    v = np.concatenate(values)
    order = np.argsort(-v, kind="mergesort")
    v = v[order]
    fpr = np.cumsum(np.concatenate(fp_weight)[order])
    fpr /= fpr[-1]
    pro = np.cumsum(np.concatenate(overlap_weight)[order])
    # One point per distinct value (the threshold takes all pixels equal to it at once), from (0, 0).
    last = np.r_[np.flatnonzero(np.diff(v) != 0), len(v) - 1]
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    end = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    if end < len(fpr):
        f0, f1, p0, p1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        cut = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0) if f1 > f0 else p1
        fpr, pro = np.r_[fpr[:end], max_fpr], np.r_[pro[:end], cut]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def hits(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], dilation: int = 3) -> np.ndarray:
    """(N,) per image: 1.0 where its hottest map pixel lies inside its mask dilated by ``dilation``
    pixels at the map's resolution (a mask of another size is resized to the map's by nearest
    neighbour first), 0.0 where not, NaN where the mask is None or empty."""
    from scipy import ndimage

    out = np.full(len(maps), np.nan)
    for i, (amap, mask) in enumerate(zip(maps, masks)):
        if mask is None or not mask.any():
            continue
        amap = np.asarray(amap, dtype=np.float32)
        if mask.shape != amap.shape:
            size = (amap.shape[1], amap.shape[0])
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        if dilation > 0:
            mask = ndimage.binary_dilation(mask, iterations=dilation)
        out[i] = float(mask.flat[int(np.argmax(amap))])
    return out


def hit_rate(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], dilation: int = 3) -> float | None:
    """Share of the defect images whose hottest map pixel lies inside their ground-truth mask
    dilated by ``dilation`` pixels, at the map's resolution (``hits``). Images whose mask is None or
    empty are not counted; None when there is none to count. Answers "does the heat map point at the
    defect?", which AUROC over all pixels does not."""
    h = hits(maps, masks, dilation)
    h = h[~np.isnan(h)]
    return float(h.mean()) if len(h) else None


# -- scorers for any embedding ---------------------------------------------------------------------
# A scorer learns what normal embeddings look like and scores any embedding, higher = more
# anomalous, like every score in the project. Switching scorer on a finished run re-uses its stored
# embeddings (``rescore_run``): the network is never retrained or even loaded.


class Scorer:
    """Base: ``__init__`` stores keyword parameters unchanged; ``fit(normal)`` checks them, learns
    attributes ending in ``_`` and returns self; ``score(x)`` gives (N,) float64, higher = more anomalous.

    Embeddings are (N, D) float arrays. Subclasses implement ``_fit(z)`` and ``_score(z)`` on the
    embeddings after standardisation, where they have a ``standardize`` parameter and it is on
    (mean and spread from the normal embeddings only).
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    params: ClassVar[list[Param]] = []

    def __init__(self, **params: Any) -> None:
        self.params = params

    def get_params(self) -> dict[str, Any]:
        return validate_params(self.param_specs(), self.params)

    @classmethod
    def param_specs(cls) -> list[Param]:
        return cls.params

    def fit(self, normal: np.ndarray) -> "Scorer":
        self.config_ = self.get_params()
        x = _check_embeddings(normal, "normal embeddings")
        if len(x) < 2:
            raise ValueError(f"scorer {self.name} needs at least 2 normal embeddings, got {len(x)}")
        self.dim_ = x.shape[1]
        self.mean_ = x.mean(0)
        scale = x.std(0)
        # Constant features carry no information; dividing by ~0 would blow them up.
        self.scale_ = np.where(scale > 1e-12 * scale.max(), scale, 1.0)
        self._fit(self._preprocess(x))
        return self

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        if not hasattr(self, "config_"):
            raise RuntimeError(f"scorer {self.name} is not fitted: call fit() with normal embeddings first")
        x = _check_embeddings(embeddings, "embeddings")
        if x.shape[1] != self.dim_:
            raise ValueError(f"embeddings have {x.shape[1]} dimensions; the scorer was fitted on {self.dim_}")
        if len(x) == 0:
            return np.zeros(0)
        return np.asarray(self._score(self._preprocess(x)), dtype=np.float64)

    def _preprocess(self, x: np.ndarray) -> np.ndarray:
        if self.config_.get("standardize", False):
            return (x - self.mean_) / self.scale_
        return x

    def _fit(self, z: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_embeddings(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


SCORERS: Registry[Entry] = Registry("scorer")


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: adds a Scorer subclass to ``SCORERS`` under ``cls.name``."""
    SCORERS.register(cls.name)(Entry(cls.name, cls, cls.param_specs(), cls.help))
    return cls


def build_scorer(name: str, **params: Any) -> Scorer:
    """An unfitted scorer; parameters are checked here so bad input fails early."""
    scorer = SCORERS.get(name).fn(**params)
    try:
        scorer.get_params()
    except ValueError as exc:
        raise ValueError(f"scorer {name!r}: {exc}") from None
    return scorer


def rescore_run(run: Any, scorer_name: str, **params: Any) -> np.ndarray:
    """Scores (N,) for every row of a finished run from its stored embeddings, with the scorer
    fitted on the rows whose role is "fit"; the network is not loaded, let alone retrained."""
    results = run.results
    if "embedding" not in results:
        raise ValueError(f"run {getattr(run, 'run_id', '?')} has no embeddings to rescore (its method gives none)")
    fit_rows = results["role"] == "fit"
    return build_scorer(scorer_name, **params).fit(results["embedding"][fit_rows]).score(results["embedding"])


def _standardize_param(default: bool) -> Param:
    return Param("standardize", bool, default, "Scale each feature to unit spread on the normal embeddings first.")


@register_scorer
class CentroidEuclidean(Scorer):
    name = "centroid_euclidean"
    help = "Euclidean distance to the mean normal embedding."
    params = [_standardize_param(False)]

    def _fit(self, z: np.ndarray) -> None:
        self.center_ = z.mean(0)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return np.linalg.norm(z - self.center_, axis=1)


@register_scorer
class CentroidCosine(Scorer):
    name = "centroid_cosine"
    help = "Cosine distance (1 - cosine similarity) to the mean normal embedding; ignores length."
    # No standardisation: centring would move the mean normal embedding to the origin.

    def _fit(self, z: np.ndarray) -> None:
        self.center_ = z.mean(0)

    def _score(self, z: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(z, axis=1) * np.linalg.norm(self.center_)
        return 1.0 - (z @ self.center_) / np.maximum(norms, 1e-12)


@register_scorer
class KNN(Scorer):
    name = "knn"
    help = "Mean distance to the k nearest normal embeddings."
    params = [
        Param("k", int, 5, "Number of nearest normal neighbours averaged.", 1, 100),
        _standardize_param(True),
    ]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.k_ = min(self.config_["k"], len(z))
        self.neighbors_ = NearestNeighbors(n_neighbors=self.k_).fit(z)

    def _score(self, z: np.ndarray) -> np.ndarray:
        distances, _ = self.neighbors_.kneighbors(z)
        return distances.mean(1)


@register_scorer
class Gaussian(Scorer):
    """Mahalanobis distance with the Ledoit-Wolf shrunk covariance of the normal embeddings.

    ``location_`` and ``precision_`` are in the input space (the standardisation folded in), so
    ``sqrt((x - location_) @ precision_ @ (x - location_))`` is the score of ``x``.
    """

    name = "gaussian"
    help = "Mahalanobis distance to the normal embeddings' Gaussian (Ledoit-Wolf shrunk covariance)."
    params = [_standardize_param(True)]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.covariance import LedoitWolf

        lw = self.covariance_model_ = LedoitWolf().fit(z)
        scale = self.scale_ if self.config_["standardize"] else np.ones(self.dim_)
        offset = self.mean_ if self.config_["standardize"] else np.zeros(self.dim_)
        self.location_ = offset + scale * lw.location_
        self.precision_ = lw.precision_ / np.outer(scale, scale)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(self.covariance_model_.mahalanobis(z), 0.0))


class _Reduced(Scorer):
    """Standardise, then PCA-whiten to at most ``pca_dims`` dimensions: density models need few dimensions."""


    def _reduce_fit(self, z: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        dims = self.config_["pca_dims"]
        self.pca_ = None
        if dims and dims < z.shape[1]:
            self.pca_ = PCA(n_components=min(dims, len(z) - 1), whiten=True, random_state=0).fit(z)
            return self.pca_.transform(z)
        return z

    def _reduce(self, z: np.ndarray) -> np.ndarray:
        return z if self.pca_ is None else self.pca_.transform(z)


_PCA_PARAM = Param("pca_dims", int, 16, "Whitened principal components kept before fitting (0: all).", 0, 512)


@register_scorer
class GMM(_Reduced):
    name = "gmm"
    help = "Negative log-likelihood under a Gaussian mixture; the number of components is chosen by BIC."
    params = [
        Param("max_components", int, 5, "Largest number of mixture components tried (1..this, best BIC).", 1, 20),
        _PCA_PARAM,
        _standardize_param(True),
        Param("seed", int, 0, "Random seed of the mixture's initialisation.", 0, 2**31 - 1),
    ]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.mixture import GaussianMixture

        z = self._reduce_fit(z)
        best = None
        for n in range(1, min(self.config_["max_components"], len(z)) + 1):
            gmm = GaussianMixture(n, covariance_type="full", reg_covar=1e-4, random_state=self.config_["seed"]).fit(z)
            bic = gmm.bic(z)
            if best is None or bic < best[0]:
                best = (bic, gmm)
        self.bic_, self.mixture_ = best
        self.n_components_ = self.mixture_.n_components

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -self.mixture_.score_samples(self._reduce(z))


@register_scorer
class KDE(_Reduced):
    name = "kde"
    help = "Negative log-density under a Gaussian kernel density; the bandwidth is chosen from the data."
    params = [
        Param("bandwidth", str, "cv", "cv: best held-out likelihood (5-fold); scott or silverman: rule of thumb.",
              choices=("cv", "scott", "silverman")),
        Param("pca_dims", int, 8, "Whitened principal components kept before fitting (0: all).", 0, 512),
        _standardize_param(True),
    ]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.neighbors import KernelDensity

        z = self._reduce_fit(z)
        rule = self.config_["bandwidth"]
        if rule == "cv" and len(z) >= 10:
            from sklearn.model_selection import GridSearchCV

            n, d = z.shape
            scott = n ** (-1.0 / (d + 4)) * float(np.mean(z.std(0)) or 1.0)
            grid = GridSearchCV(KernelDensity(), {"bandwidth": scott * np.logspace(-1, 1, 21)}, cv=5)
            self.kde_ = grid.fit(z).best_estimator_
        else:
            self.kde_ = KernelDensity(bandwidth="scott" if rule == "cv" else rule).fit(z)
        self.bandwidth_ = float(self.kde_.bandwidth_)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -self.kde_.score_samples(self._reduce(z))


@register_scorer
class OneClassSVMScorer(Scorer):
    name = "ocsvm"
    help = "One-class SVM with an RBF kernel: how far outside the learned normal region."
    params = [
        Param("nu", float, 0.1, "Upper bound on the fraction of normal embeddings treated as outliers.", 0.001, 1.0),
        _standardize_param(True),
    ]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.svm import OneClassSVM

        self.svm_ = OneClassSVM(kernel="rbf", gamma="scale", nu=self.config_["nu"]).fit(z)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -self.svm_.decision_function(z)


@register_scorer
class IsolationForestScorer(Scorer):
    name = "iforest"
    help = "Isolation forest: embeddings that random splits isolate quickly are anomalous."
    params = [
        Param("n_estimators", int, 200, "Number of random trees.", 10, 2000),
        Param("seed", int, 0, "Random seed of the trees.", 0, 2**31 - 1),
    ]

    def _fit(self, z: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        cfg = self.config_
        self.forest_ = IsolationForest(n_estimators=cfg["n_estimators"], random_state=cfg["seed"]).fit(z)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -self.forest_.score_samples(z)
