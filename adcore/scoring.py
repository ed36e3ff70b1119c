"""Metrics on raw anomaly scores and maps (higher = more anomalous everywhere), with scikit-learn."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


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

    Maps and masks are compared at most ``max_side`` pixels on the long side, so the cost stays
    bounded on large sets; ``masks[i]`` is None for an image without ground truth, which is left out
    unless it is normal (pass an all-False mask for normal images).
    """
    values, labels = [], []
    for amap, mask in zip(maps, masks):
        if mask is None:
            continue
        h, w = mask.shape
        scale = min(1.0, max_side / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        m = np.asarray(Image.fromarray(np.asarray(amap, dtype=np.float32)).resize(size, Image.BILINEAR))
        g = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        values.append(m.ravel())
        labels.append(g.ravel())
    if not labels:
        return None
    y = np.concatenate(labels)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.concatenate(values)))
