"""Short texts and table rows the pages show about image sets and runs: durations, titles, counts."""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Sequence


def format_seconds(seconds: float | None) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``; None -> ``"–"``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


PHASE_NAMES = {"loading": "loading", "training": "training", "scoring": "scoring", "mapping": "embedding map"}


def phase_line(config: dict[str, Any]) -> str:
    """A run's duration by phase: "loading 0:02 · training 1:18 · scoring 0:40 · embedding map 0:05"."""
    phases = config.get("phase_seconds") or {}
    if not phases and config.get("train_seconds") is not None:  # runs from before phases were recorded
        phases = {"training": config["train_seconds"]}
    return " · ".join(f"{PHASE_NAMES.get(k, k)} {format_seconds(v)}" for k, v in phases.items())


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``plural(1, "photo")`` -> ``"1 photo"``, ``plural(0, "photo")`` -> ``"0 photos"``."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def set_overview(image_set: Any) -> str:
    """What an ``ImageSet`` holds, in one line: "80 normal photos, 50 test photos with 30 masks"."""
    normal, test = image_set.normal_train, image_set.test
    text = plural(len(normal), "normal photo")
    if test:
        masks = sum(r.mask_path is not None for r in test)
        text += f", {plural(len(test), 'test photo')}" + (f" with {plural(masks, 'mask')}" if masks else "")
    return text


# --- tables -----------------------------------------------------------------------------------


def counts_rows(summary: dict) -> list[dict[str, Any]]:
    """Rows (split, class, images, masks) of an ``ImageSet.summary()``, for a table."""
    rows = []
    for split, labels in summary["counts"].items():
        for label, n in labels.items():
            mask = summary["masks"].get(label) if split == "test" else None
            rows.append(
                {
                    "split": split,
                    "class": label,
                    "images": n,
                    "masks": f"{mask['matched']}/{mask['images']}" if mask else "",
                }
            )
    return rows


def size_summary(summary: dict) -> str:
    """One line about the image sizes of an ``ImageSet.summary()``, or "" for an empty set."""
    z = summary.get("sizes")
    if not z:
        return ""
    w, h = z["most_common"]
    if z["n_distinct"] == 1:
        n = z["most_common_count"]
        return f"The image is {w}×{h} px." if n == 1 else f"All {n} images are {w}×{h} px."
    width = _span(z["min_width"], z["max_width"])
    height = _span(z["min_height"], z["max_height"])
    return (
        f"Widths {width} px, heights {height} px, {z['n_distinct']} distinct sizes; "
        f"most common {w}×{h} ({z['most_common_count']} images). "
        "Every image is squashed to the method's square image_size for training."
    )


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


def run_title(config: dict[str, Any], run_id: str) -> str:
    """A run's display name: its given name, else its id without the date stamp, plus when it ran
    ("autoencoder-9857c6 · 11-22 14:29")."""
    if config.get("name"):
        return str(config["name"])
    parts = run_id.split("-")
    short = "-".join(parts[2:]) if len(parts) > 3 else run_id
    created = (config.get("created") or "").replace("T", " ")[5:16]
    return f"{short} · {created}" if created else short


def run_row(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """One row of the runs table from a run's ``config.json`` contents."""
    metrics = config.get("metrics") or {}
    data = config.get("data") or {}
    return {
        "name": config.get("name") or "",
        "method": config.get("method", ""),
        "created": (config.get("created") or "").replace("T", " "),
        "device": config.get("device", ""),
        "training s": config.get("train_seconds"),
        "total s": config.get("total_seconds"),
        "budget stop": bool(config.get("stopped_by_budget")),
        "image AUROC": metrics.get("image_auroc"),
        "pixel AUROC": metrics.get("pixel_auroc"),
        "data": PurePath(data.get("root") or data.get("path") or "").name,
        "run id": run_id,
    }


# --- comparing runs ---------------------------------------------------------------------------


def key_params(config: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The method parameters that differ from the method's defaults ("epochs 40 · width 8"), except
    image size and seed, which have their own columns or do not matter for comparing."""
    params = config.get("params") or {}
    changed = [
        f"{name.replace('_', ' ')} {value:g}" if isinstance(value, float) else f"{name.replace('_', ' ')} {value}"
        for name, value in params.items()
        if name not in ("image_size", "seed") and defaults.get(name, object()) != value
    ]
    return " · ".join(changed) or "defaults"


def comparison_row(
    config: dict[str, Any], run_id: str, defaults: dict[str, Any], threshold: float, point: Any
) -> dict[str, Any]:
    """One row of the Compare table; ``point`` is the OperatingPoint at ``threshold`` on the labelled
    test images (None when the run has no labelled defects)."""
    row = run_row(config, run_id)
    augmentations = [name for name, _ in (config.get("augmentations") or [])]
    return {
        "name": run_title(config, run_id),
        "data": row["data"],  # beside the name: runs are comparable only on the same data
        "image AUROC": row["image AUROC"],
        "pixel AUROC": row["pixel AUROC"],
        "F1": None if point is None else point.f1,
        "recall": None if point is None else point.recall,
        "false alarms": None if point is None else point.false_alarm_rate,
        "threshold": threshold,
        "method": row["method"],
        "augmentations": ", ".join(augmentations) or "none",
        "key params": key_params(config, defaults),
        # A self-configuring method's 0 ("from the photos") is resolved in its selection.
        "image size": (config.get("params") or {}).get("image_size") or (config.get("selection") or {}).get("image_size"),
        "device": (row["device"] or "").split(" (")[0],
        "training s": row["training s"],
    }


# Which way is better, per column of the Compare table.
HIGHER_IS_BETTER = ("image AUROC", "pixel AUROC", "F1", "recall")


LOWER_IS_BETTER = ("training s", "false alarms")


def best_per_column(rows: Sequence[dict[str, Any]]) -> dict[str, set[int]]:
    """Column -> indices of the rows holding the best value (ties all count; missing values never).
    Only runs on the same data (their "data" value) are compared: a run is best among those alone,
    and one with no other run on its data is never marked."""
    best: dict[str, set[int]] = {}
    by_data: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        by_data.setdefault(r.get("data"), []).append(i)
    for members in by_data.values():
        for column in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER):
            values = [(i, rows[i].get(column)) for i in members if rows[i].get(column) is not None]
            if len(values) < 2:
                continue
            pick = max if column in HIGHER_IS_BETTER else min
            target = pick(v for _, v in values)
            best.setdefault(column, set()).update(i for i, v in values if v == target)
    return best
