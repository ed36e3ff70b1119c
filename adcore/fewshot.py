"""A few labelled defects on top of a run: a random forest on histograms of its anomaly maps,
measured by cross-validation over images (an image is never scored by a forest fitted on it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_BINS = 16
MIN_DEFECTS = 3  # per class, so that every fold of a 3-fold split can hold at least one


@dataclass
class FewShotResult:
    """Out-of-fold scores (higher = more likely a defect) for the labelled images, and the metrics."""

    rel_path: np.ndarray  # (N,) the images used, in the run's order
    is_defect: np.ndarray  # (N,) bool
    scores: np.ndarray  # (N,) out-of-fold probability of a defect
    fold: np.ndarray  # (N,) the fold in which each image was scored
    folds: list[dict] = field(default_factory=list)  # per fold: n_fit, n_scored, defects, auroc, aupr
    image_auroc: float | None = None
    image_aupr: float | None = None
    baseline_auroc: float | None = None  # the run's own score on the same images, for comparison


def histogram_features(maps: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, h, w) anomaly maps -> (N, len(edges) + 3) features: the fraction of pixels in each bin of
    ``edges`` (values outside fall in the first or last bin), plus each map's 99th percentile, max
    and mean. Fixed edges, so that features mean the same for every image."""
    flat = np.asarray(maps, dtype=np.float32).reshape(len(maps), -1)
    bins = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, len(edges) - 1)
    hist = np.stack([np.bincount(b, minlength=len(edges)) for b in bins]).astype(np.float64) / flat.shape[1]
    extra = np.stack([np.percentile(flat, 99, axis=1), flat.max(1), flat.mean(1)], 1)
    return np.concatenate([hist, extra], 1)


def labelled_images(results: dict[str, np.ndarray], include_synthetic: bool = False) -> np.ndarray:
    """Indices of the run's images with a known label and a map: the hold-out and test images
    (the images the run was fitted on are left out: their maps are too good to be typical), and
    the synthetic defects if asked."""
    if "anomaly_map" not in results:
        raise ValueError("this run has no anomaly maps (its method gives none), so there is nothing to learn from")
    roles = ["holdout", "test"] + (["synthetic"] if include_synthetic else [])
    return np.flatnonzero(np.isin(results["role"], roles))


def cross_validate(
    results: dict[str, np.ndarray],
    *,
    folds: int = 5,
    bins: int = DEFAULT_BINS,
    trees: int = 200,
    seed: int = 0,
    include_synthetic: bool = False,
) -> FewShotResult:
    """Stratified ``folds``-fold cross-validation over the labelled images of a run's ``results``
    (as in ``results.npz``: role, label, rel_path, score, anomaly_map). Each fold's forest, and the
    histogram bin edges, are fitted on the other folds only. Raises ValueError when there are too
    few labelled defects or normal images."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedGroupKFold

    from adcore.scoring import image_metrics

    idx = labelled_images(results, include_synthetic)
    is_defect = results["label"][idx] != "good"
    n_defect, n_normal = int(is_defect.sum()), int((~is_defect).sum())
    if n_defect < MIN_DEFECTS or n_normal < MIN_DEFECTS:
        raise ValueError(
            f"few-shot needs at least {MIN_DEFECTS} labelled defect and {MIN_DEFECTS} normal images outside "
            f"the training set; this run has {n_defect} defect and {n_normal} normal"
        )
    n_splits = min(folds, n_defect, n_normal)
    if n_splits < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    maps = results["anomaly_map"][idx].astype(np.float32)
    scores = np.zeros(len(idx))
    fold_of = np.full(len(idx), -1)
    per_fold = []
    # Grouped by file, so a synthetic defect and the photo it was pasted on are never split apart.
    groups = results["rel_path"][idx]
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(splitter.split(np.zeros(len(idx)), is_defect, groups)):
        # Bin edges from the fitting images' map values only, so nothing of the scored images leaks in.
        edges = np.quantile(maps[fit], np.linspace(0, 1, bins + 1)[:-1])
        forest = RandomForestClassifier(n_estimators=trees, random_state=seed + k, class_weight="balanced", n_jobs=1)
        forest.fit(histogram_features(maps[fit], edges), is_defect[fit])
        scores[held] = forest.predict_proba(histogram_features(maps[held], edges))[:, 1]
        fold_of[held] = k
        metrics = image_metrics(scores[held], is_defect[held])
        per_fold.append({
            "fold": k,
            "n_fit": len(fit),
            "n_scored": len(held),
            "defects_scored": int(is_defect[held].sum()),
            "auroc": metrics["image_auroc"],
            "aupr": metrics["image_aupr"],
            "fit_index": idx[fit],
            "scored_index": idx[held],
        })
    overall = image_metrics(scores, is_defect)
    return FewShotResult(
        rel_path=results["rel_path"][idx],
        is_defect=is_defect,
        scores=scores,
        fold=fold_of,
        folds=per_fold,
        image_auroc=overall["image_auroc"],
        image_aupr=overall["image_aupr"],
        baseline_auroc=image_metrics(results["score"][idx], is_defect)["image_auroc"],
    )


def format_table(result: FewShotResult) -> str:
    """Per-fold and overall numbers as a fixed-width text table."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = [("fold", "fit", "scored", "defects", "AUROC", "AUPR")]
    for f in result.folds:
        rows.append((str(f["fold"] + 1), str(f["n_fit"]), str(f["n_scored"]), str(f["defects_scored"]),
                     fmt(f["auroc"]), fmt(f["aupr"])))
    rows.append(("all (out-of-fold)", "", str(len(result.scores)), str(int(result.is_defect.sum())),
                 fmt(result.image_auroc), fmt(result.image_aupr)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"the run's own score on the same images: AUROC {fmt(result.baseline_auroc)}")
    return "\n".join(lines)
