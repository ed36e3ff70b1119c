"""One training run end to end: image set -> hold-out split -> method.fit -> scores -> run folder.

Used by the background jobs of the app and by ``python -m adcore train`` alike.
"""

from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import adcore
from adcore.data import ImageSet, load_mask, open_image_set
from adcore.device import describe_device, pick_device
from adcore.methods import DEFAULT_METHOD, Cancelled, FitContext, Method, build_method
from adcore.photo_cache import MAX_SIDE, PhotoCache, image_shape, take, thumbnail_stack
from adcore.projection import DEFAULT_MAP_KEY, default_map
from adcore.runs import load_run, new_run_id, write_run
from adcore.scoring import hit_rate, image_metrics, pixel_auroc, pixel_pro

STORED_MAP_SIDE = 128  # maps are kept at most this size in results.npz (float16)
METRIC_MAP_SIDE = 512  # pixel metrics compare maps and masks at most this size (longer side)
SYNTHETIC_KINDS = ("cutpaste", "cutpaste_scar")


@dataclass
class TrainSpec:
    """Everything needed to start a run; stored in the run's config."""

    data: str
    method: str = DEFAULT_METHOD
    params: dict[str, Any] = field(default_factory=dict)
    augmentations: list[tuple[str, dict]] | None = None  # None: the method's defaults
    holdout_fraction: float = 0.2  # normal images kept out of training to set the threshold
    budget_s: float | None = None
    device: str = "auto"
    name: str = ""
    # Photos are decoded once into an on-disk cache, at most this many pixels on their longer side
    # (None: at full resolution); photo_cache=False keeps them in memory at full resolution instead.
    max_photo_side: int | None = MAX_SIDE
    photo_cache: bool = True


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, holdout) of n normal images; at least 2 stay for fitting."""
    n_hold = int(round(n * fraction))
    n_hold = min(max(n_hold, 1 if fraction > 0 and n >= 5 else 0), max(0, n - 2))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def synthetic_defects(images: Sequence[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[str]]:
    """CutPaste and scar defects pasted onto (held-out) normal images: a first recall estimate."""
    pairs = list(iter_synthetic_defects(images, seed))
    return [image for image, _ in pairs], [label for _, label in pairs]


def iter_synthetic_defects(images: Sequence[np.ndarray], seed: int) -> Iterator[tuple[np.ndarray, str]]:
    """(image, label) of each of ``synthetic_defects``, one at a time (same order, same pixels)."""
    from adcore.augment import apply

    rng = np.random.default_rng(seed + 1)
    for kind in SYNTHETIC_KINDS:
        for image in images:
            yield apply(kind, image, rng).image, f"synthetic {kind.replace('_', ' ')}"


def load_teacher(method: Method, device: torch.device) -> Method | None:
    """The trained method ``method`` learns from, loaded from the run folder it names (a
    student-teacher's teacher run), for ``FitContext.teacher``; None when it learns from no run."""
    folder = method.teacher_run()
    return None if folder is None else load_run(folder).load_method(device=device)


def train_run(
    spec: TrainSpec,
    runs_root: Path,
    *,
    on_progress: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    image_set: ImageSet | None = None,
) -> Path:
    """Train ``spec`` and write its run folder under ``runs_root``; returns the folder.

    Raises ``Cancelled`` if ``stop_event`` is set during training (nothing is written), and whatever
    the method raised if it failed (nothing is written either).
    """
    started_wall, started = datetime.now(timezone.utc), time.monotonic()
    stop_event = stop_event or threading.Event()
    method = build_method(spec.method, **spec.params)
    params = method.get_params()
    device = pick_device(spec.device)

    def progress(event: dict) -> None:
        if on_progress is not None:
            on_progress(event)

    progress({"phase": "loading images", "step": 0, "total_steps": 0})
    image_set = image_set or open_image_set(spec.data)
    _require_folder(image_set, "is gone (deleted or moved): open it again, or another set, and train again")
    skipped = [{"rel_path": s.rel_path, "reason": s.reason} for s in image_set.skipped]
    with PhotoCache(in_memory=not spec.photo_cache, max_side=spec.max_photo_side) as cache:

        def decoded(done: int, total: int) -> None:
            if stop_event.is_set():
                raise Cancelled("training was cancelled")
            progress({"phase": "decoding photos", "step": done, "total_steps": total, "images": done})

        normal_records, normal_images = cache.load(image_set.normal_train, skipped, on_progress=decoded,
                                                   stop=stop_event)
        if len(normal_records) < 2:
            raise ValueError(
                f"{spec.data}: found {len(normal_records)} usable normal training image(s); at least 2 are needed"
            )
        fit_idx, hold_idx = split_holdout(len(normal_records), spec.holdout_fraction, params["seed"])
        fit_images = take(normal_images, fit_idx)
        hold_images = take(normal_images, hold_idx)
        synth_labels: list[str] = []

        def synthetic() -> Iterator[np.ndarray]:  # one at a time into the cache, never all in memory
            for image, label in iter_synthetic_defects(hold_images, params["seed"]):
                synth_labels.append(label)
                yield image

        synth_images = cache.keep(synthetic())
        monitor = {"hold-out normal": hold_images}
        for label in dict.fromkeys(synth_labels):
            monitor[label] = take(synth_images, [i for i, lab in enumerate(synth_labels) if lab == label])

        ctx = FitContext(
            device=device,
            augmentations=spec.augmentations,
            budget_s=spec.budget_s,
            on_progress=progress,
            stop_event=stop_event,
            monitor=monitor if len(hold_images) else None,
            teacher=load_teacher(method, device),
        )
        t0 = time.monotonic()
        load_seconds = t0 - started
        method.fit(fit_images, ctx)
        train_seconds = time.monotonic() - t0
        stopped_by_budget = ctx.stopped_by_budget

        # Score everything the run will be explored with: fit set, hold-out, test set, synthetic defects.
        _require_folder(image_set, "was deleted or moved while the model trained; nothing was saved")
        test_records, test_images = cache.load(image_set.test, skipped, on_progress=decoded, stop=stop_event)
        groups = [
            ("fit", [normal_records[i] for i in fit_idx], fit_images),
            ("holdout", [normal_records[i] for i in hold_idx], hold_images),
            ("test", test_records, test_images),
        ]
        all_images = fit_images + hold_images + test_images + synth_images
        offset = len(fit_images) + len(hold_images)
        predictions, test_maps = _predict_with_progress(method, all_images, ctx, keep=range(offset, offset + len(test_images)))
        n_fit, n_hold, n_test, n_all = len(fit_images), len(hold_images), len(test_images), len(all_images)
        # The galleries' thumbnails of the synthetic defects, so that no page pastes them all again to
        # show a few (on 5-MP photos that means decoding every hold-out photo).
        synth_thumbnails = thumbnail_stack(synth_images)
    t_score = time.monotonic() - t0 - train_seconds

    rel_paths, splits, labels, roles = [], [], [], []
    for role, records, _ in groups:
        for rec in records:
            rel_paths.append(rec.rel_path)
            splits.append(rec.split)
            labels.append(rec.label)
            roles.append(role)
    for i, label in enumerate(synth_labels):
        src = hold_idx[i % len(hold_idx)]
        rel_paths.append(normal_records[src].rel_path)
        splits.append("synthetic")
        labels.append(label)
        roles.append("synthetic")

    results: dict[str, np.ndarray] = {
        "rel_path": np.array(rel_paths, dtype=str),
        "split": np.array(splits, dtype=str),
        "label": np.array(labels, dtype=str),
        "role": np.array(roles, dtype=str),
        "score": predictions.scores.astype(np.float64),
    }
    if predictions.embeddings is not None:
        results["embedding"] = predictions.embeddings.astype(np.float32)
    if len(synth_labels):
        results["synthetic_thumbnail"], results["synthetic_thumbnail_shape"] = synth_thumbnails
    metrics = _test_metrics(results, test_maps, test_records)
    t_map = time.monotonic()
    if predictions.embeddings is not None:
        # The Embeddings page's first map, so that it opens at once (a t-SNE takes seconds to minutes).
        progress({"phase": "mapping embeddings", "step": 0, "total_steps": 0})
        results[DEFAULT_MAP_KEY] = default_map(results["embedding"])
    map_seconds = time.monotonic() - t_map
    if predictions.anomaly_maps is not None:
        results["anomaly_map"] = predictions.anomaly_maps

    config = {
        "name": spec.name,
        "method": spec.method,
        "params": params,
        "augmentations": [[n, p] for n, p in method.augmentations_],
        "learns_pasted_defects": type(method).learns_pasted_defects,
        "holdout_fraction": spec.holdout_fraction,
        "budget_s": spec.budget_s,
        "max_photo_side": spec.max_photo_side if spec.photo_cache else None,
        "data": {
            "path": str(Path(spec.data).resolve()) if not str(spec.data).startswith("<") else spec.data,
            "root": str(image_set.root),
            "layout": image_set.layout,
            "n_fit": n_fit,
            "n_holdout": n_hold,
            "n_test": n_test,
            "defect_classes": image_set.defect_classes,
        },
        "skipped": skipped,
        "device": describe_device(device),
        "created": started_wall.isoformat(timespec="seconds"),
        "train_seconds": round(train_seconds, 2),
        # Every phase by name, and their total: the one duration the pages call the run's.
        "phase_seconds": {"loading": round(load_seconds, 2), "training": round(train_seconds, 2),
                          "scoring": round(t_score, 2), "mapping": round(map_seconds, 2)},  # fmt: skip
        "total_seconds": round(load_seconds + train_seconds + t_score + map_seconds, 2),
        "score_images_per_second": round(n_all / max(t_score, 1e-9), 2),
        "stopped_by_budget": stopped_by_budget,
        "metrics": metrics,
        **method.run_details(),
        "versions": {
            "adcore": adcore.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    progress({"phase": "saving", "step": 0, "total_steps": 0})
    return write_run(
        runs_root, new_run_id(spec.method), config=config, method=method, history=ctx.history, results=results
    )


def _require_folder(image_set: ImageSet, what_happened: str) -> None:
    """Fail with a message rather than train on, or score, a set whose folder has disappeared
    (each of its images would otherwise just be skipped as unreadable)."""
    if not Path(image_set.root).is_dir():
        raise ValueError(f"The image set folder {image_set.root} {what_happened}.")


def _predict_with_progress(method: Method, images: Sequence[np.ndarray], ctx: FitContext, batch: int = 32,
                           keep: range = range(0)):
    """Predict in chunks so the page shows scoring progress and Cancel still works. Maps are shrunk
    batch by batch to the stored size (``_small_maps``); those of the images in ``keep`` are also
    returned at most ``METRIC_MAP_SIDE`` on their longer side, for the pixel metrics."""
    from adcore.methods.base import Prediction

    side = min(STORED_MAP_SIDE, max((max(image_shape(images, i)[:2]) for i in range(len(images))), default=1))
    parts, kept = [], []
    for start in range(0, len(images), batch):
        ctx.report(step=start, total_steps=len(images), phase="scoring", images=start, record=False)
        part = method.predict(images[start : start + batch], batch_size=batch)
        if part.anomaly_maps is not None:
            kept += [_metric_map(m) for i, m in enumerate(part.anomaly_maps, start) if i in keep]
            part.anomaly_maps = _small_maps(part.anomaly_maps, side)
        part.reconstructions = None
        parts.append(part)
    if not parts:
        return Prediction(scores=np.zeros(0)), None
    return Prediction(
        scores=np.concatenate([p.scores for p in parts]),
        embeddings=None if parts[0].embeddings is None else np.concatenate([p.embeddings for p in parts]),
        anomaly_maps=None if parts[0].anomaly_maps is None else np.concatenate([p.anomaly_maps for p in parts]),
    ), (kept if parts[0].anomaly_maps is not None else None)


def _small_maps(maps: list[np.ndarray], side: int) -> np.ndarray:
    """Maps of any sizes -> (N, side, side) float16, area-averaged, for the pages."""
    t = [torch.from_numpy(m)[None, None] for m in maps]
    small = [torch.nn.functional.interpolate(x, size=(side, side), mode="area")[0, 0] for x in t]
    return torch.stack(small).numpy().astype(np.float16)


def _metric_shape(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, METRIC_MAP_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _metric_map(amap: np.ndarray) -> np.ndarray:
    """A map at most ``METRIC_MAP_SIDE`` on its longer side (area-averaged), or itself."""
    shape = _metric_shape(*amap.shape)
    if shape == amap.shape:
        return amap
    return torch.nn.functional.interpolate(torch.from_numpy(amap)[None, None], size=shape, mode="area")[0, 0].numpy()


def _mask_like(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask at a map's ``shape``: a cell is defect where any of its pixels is."""
    if mask.shape == tuple(shape):
        return mask
    small = torch.nn.functional.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=shape, mode="area")
    return small[0, 0].numpy() > 0


def _test_metrics(results, test_maps, test_records) -> dict[str, float | None]:
    """Image metrics on the test split (normal hold-out excluded); pixel AUROC, PRO and the heat map's
    hit rate (with the number of defect photos it counts) where masks exist, with maps and masks at
    most ``METRIC_MAP_SIDE`` on their longer side."""
    test = results["role"] == "test"
    metrics = image_metrics(results["score"][test], results["label"][test] != "good")
    metrics.update(pixel_auroc=None, pixel_pro=None, hit_rate=None, hit_rate_images=0)
    if test_maps is not None and any(r.mask_path for r in test_records):
        masks = []
        for rec, amap in zip(test_records, test_maps):
            if rec.is_normal:
                masks.append(np.zeros(amap.shape, dtype=bool))
            else:
                masks.append(_mask_like(load_mask(rec), amap.shape))
        metrics["pixel_auroc"] = pixel_auroc(test_maps, masks)
        metrics["pixel_pro"] = pixel_pro(test_maps, masks)
        metrics["hit_rate"] = hit_rate(test_maps, masks)
        metrics["hit_rate_images"] = sum(1 for m in masks if m.any())
    return metrics
