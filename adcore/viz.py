"""Pure functions that turn images, augmentations, progress and runs into what a page shows.

Images are HWC uint8 RGB throughout; figures are plotly; nothing here knows Streamlit exists.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from scipy import ndimage
from sklearn.metrics import auc

from adcore.augment import Augmented, Outline, compose
from adcore.data import ImageError, ImageRecord, load_image, load_mask
from adcore.projection import group_order, map_groups
from adcore.threshold import (
    FIT_SOURCE,
    HOLDOUT_SOURCE,
    ScoreTable,
    defect_recall,
    false_alarm_estimate,
    is_anomalous,
    run_tables,
    synthetic_group_name,
    synthetic_recall,
)

OUTLINE_COLOR = (255, 48, 48)  # a defect or a pasted patch: red on the (greyish) parts
PLACEHOLDER_COLOR = (90, 90, 90)
OTHER_PATCH_COLOR = (255, 200, 0)  # earlier pasted patches of a chain that pastes more than once


# --- images ---------------------------------------------------------------------------------------


def fit_size(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """HWC uint8 ``image`` scaled so its longer side is ``size`` pixels (aspect ratio kept)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return image
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(new, method))


def mask_ring(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """HxW bool: a band ``thickness`` pixels wide just outside ``mask`` (HxW bool), holes filled first,
    so a line drawn on it frames the region without hiding any of it."""
    filled = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(filled, iterations=thickness) & ~filled


def draw_mask_outline(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = OUTLINE_COLOR, thickness: int = 1
) -> np.ndarray:
    """A copy of HWC uint8 ``image`` framing the regions of ``mask`` (HxW bool, same size)."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    out = image.copy()
    out[mask_ring(mask, thickness)] = color
    return out


def draw_outline(
    image: np.ndarray,
    outline: Outline,
    color: tuple[int, int, int] = OUTLINE_COLOR,
    width: int | None = None,
) -> np.ndarray:
    """A copy of HWC uint8 ``image`` with the closed polygon ``outline`` ((x, y) in pixel-edge
    coordinates, as ``Augmented.outline``) drawn on it; parts outside the image are clipped."""
    h, w = image.shape[:2]
    width = width or max(1, round(max(h, w) / 160))
    pil = Image.fromarray(image)
    # Pixel-edge coordinates -> the pixels just inside the edge: a patch spanning x = 5.0 .. 10.0
    # (columns 5..9) is drawn on columns 5 and 9.
    cx = sum(x for x, _ in outline) / len(outline)
    cy = sum(y for _, y in outline) / len(outline)
    points = [
        (math.floor(x + 0.5 * np.sign(cx - x)), math.floor(y + 0.5 * np.sign(cy - y))) for x, y in outline
    ]
    ImageDraw.Draw(pil).line(points + points[:1], fill=color, width=width, joint="curve")
    return np.asarray(pil)


def polygon_mask(outline: Outline, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool of the pixels whose centres lie inside the polygon ``outline`` (pixel-edge coords)."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in outline], fill=1)
    return np.asarray(canvas, dtype=bool)


def placeholder(size: int) -> np.ndarray:
    """A plain grey ``size`` x ``size`` HWC uint8 tile for an image that could not be read."""
    return np.full((size, size, 3), PLACEHOLDER_COLOR, dtype=np.uint8)


def record_thumbnail(record: ImageRecord, size: int = 128, *, outline_mask: bool = True) -> np.ndarray:
    """The record's image, longer side ``size`` px, with its ground-truth mask outlined if it has one.

    The mask is scaled with the image before its edge is drawn, so the line stays one thumbnail
    pixel thin. A file that can no longer be read gives a grey placeholder instead of an error.
    """
    try:
        image = load_image(record.path)
        mask = load_mask(record) if outline_mask else None
    except ImageError:
        return placeholder(size)
    thumb = fit_size(image, size)
    if mask is not None and mask.any():
        small = fit_size(mask.astype(np.uint8) * 255, size, nearest=True) > 127
        if not small.any():  # a defect smaller than one thumbnail pixel still gets a mark
            small = fit_size(mask.astype(np.uint8) * 255, size) > 0
        thumb = draw_mask_outline(thumb, small, thickness=max(1, size // 64))
    return thumb


# --- augmentation previews --------------------------------------------------------------------


@dataclass
class AugmentationSample:
    """One preview: the image as training sees it, and the augmented one with pasted patches outlined."""

    original: np.ndarray  # HWC uint8, display size
    augmented: np.ndarray  # HWC uint8, display size, outline drawn
    result: Augmented  # the raw result at work size (mask, outline, box)


def augmentation_samples(
    images: Sequence[np.ndarray],
    chain: list[tuple[str, dict[str, Any]]],
    seed: int,
    *,
    work_size: int | None = None,
    display_size: int = 256,
) -> list[AugmentationSample]:
    """Run the augmentation ``chain`` once on each HWC uint8 image, all from one seeded generator.

    ``work_size`` squashes each image to that square first, as training does with ``image_size``
    (None keeps the images as they are). Both images are then scaled to ``display_size`` and the
    pasted patch is outlined there in red (the polygon of the last pasting step); when the chain
    pastes more than once, every changed area is also framed in yellow. Bad parameters raise
    ValueError.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image in images:
        if work_size is not None:
            image = np.asarray(Image.fromarray(image).resize((work_size, work_size), Image.Resampling.BILINEAR))
        result = compose(chain, image, rng)
        h, w = image.shape[:2]
        scale = display_size / max(h, w)
        # Upscaling uses nearest neighbour so a small work size looks like what the network sees.
        nearest = scale > 1
        original = fit_size(image, display_size, nearest=nearest)
        augmented = fit_size(result.image, display_size, nearest=nearest)
        outline = None if result.outline is None else [(x * scale, y * scale) for x, y in result.outline]
        if result.mask is not None:
            # Changed areas the polygon does not explain (an earlier paste in the chain) get a frame.
            others = fit_size(result.mask.astype(np.uint8) * 255, display_size, nearest=True) > 127
            if outline is not None:
                others &= ~ndimage.binary_dilation(polygon_mask(outline, others.shape), iterations=2)
            others = ndimage.binary_opening(others, iterations=1)  # specks along the polygon's edge
            if others.any():
                augmented = draw_mask_outline(augmented, others, color=OTHER_PATCH_COLOR, thickness=2)
        if outline is not None:
            augmented = draw_outline(augmented, outline)
        samples.append(AugmentationSample(original, augmented, result))
    return samples


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two HWC uint8 images next to each other on white, ``gap`` pixels apart, tops aligned."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def pick_indices(n: int, k: int, seed: int) -> list[int]:
    """``k`` distinct indices of ``n`` items (all of them if fewer), in ascending order, from ``seed``."""
    k = min(k, n)
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


# --- training progress ------------------------------------------------------------------------


def loss_curve_figure(
    losses: Sequence[tuple[int, float]], total_steps: int | None = None, *, height: int = 260
) -> go.Figure:
    """Line plot of ``(step, loss)`` pairs; the x axis spans the whole training when ``total_steps``
    is known, so the curve grows from left to right. A log y axis once the loss spans 20x or more."""
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines+markers" if len(losses) < 30 else "lines",
            line={"width": 2},
            hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>",
        )
    )
    positive = [v for v in values if v > 0]
    log_y = len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 20
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": "Training loss", "font": {"size": 14}},
        xaxis_title="step",
        yaxis_title="loss",
        yaxis_type="log" if log_y else "linear",
        showlegend=False,
    )
    if total_steps:
        fig.update_xaxes(range=[0, total_steps])
    return fig


def format_seconds(seconds: float | None) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``; None -> ``"–"``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@functools.lru_cache(maxsize=1)
def app_icon(size: int = 64) -> Image.Image:
    """The app's favicon: a grey part with a red-ringed defect. Drawn here and served by the app
    itself, so a browser without network shows it (a named icon would be fetched from a CDN)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    icon = np.zeros((size, size, 3), dtype=np.uint8)
    icon[:] = (38, 50, 66)
    part = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 <= 0.42**2
    icon[part] = (176, 184, 194)
    ring = np.abs(np.hypot(xx - 0.64, yy - 0.36) - 0.14) <= 0.045
    icon[ring] = OUTLINE_COLOR
    return Image.fromarray(icon)


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


# --- heat maps --------------------------------------------------------------------------------

COLORMAPS = ("Inferno", "Viridis", "Turbo", "Hot")  # plotly colour-scale names
REGION_COLOR = (0, 220, 255)  # predicted defect region: cyan, apart from the red ground truth


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str = "Inferno") -> np.ndarray:
    """(256, 3) uint8 colours of the plotly colour scale ``name``, low to high (read-only)."""
    fractions = pc.sample_colorscale(name, list(np.linspace(0.0, 1.0, 256)), colortype="tuple")
    lut = (np.asarray(fractions, dtype=np.float64) * 255).round().clip(0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def resize_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An anomaly map (HxW, any float dtype) resized bilinearly to ``shape`` (H, W) as float32."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape == tuple(shape):
        return m
    return np.asarray(Image.fromarray(m).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def heatmap_rgb(anomaly_map: np.ndarray, low: float, high: float, colormap: str = "Inferno") -> np.ndarray:
    """HxW map -> HWC uint8 colours; ``low`` and below get the first colour, ``high`` and above the last."""
    span = max(float(high) - float(low), 1e-12)
    index = ((np.asarray(anomaly_map, dtype=np.float32) - low) / span * 255).clip(0, 255).astype(np.uint8)
    return colormap_lut(colormap)[index]


def overlay_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    alpha: float = 0.5,
    *,
    low: float | None = None,
    high: float | None = None,
    colormap: str = "Inferno",
) -> np.ndarray:
    """HWC uint8 ``image`` with the coloured ``anomaly_map`` (any size, resized) blended on top.

    ``alpha`` is the map's opacity (0: the image only, 1: the map only). The colour range defaults
    to the map's own minimum and maximum; pass a run-wide range so two images can be compared.
    """
    m = resize_map(anomaly_map, image.shape[:2])
    low = float(m.min()) if low is None else low
    high = float(m.max()) if high is None else high
    colours = heatmap_rgb(m, low, high, colormap).astype(np.float32)
    a = float(np.clip(alpha, 0.0, 1.0))
    return (image.astype(np.float32) * (1 - a) + colours * a).round().clip(0, 255).astype(np.uint8)


def region_mask(anomaly_map: np.ndarray, pixel_threshold: float, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool at ``shape``: where the (resized) map is at or above ``pixel_threshold``."""
    return resize_map(anomaly_map, shape) >= pixel_threshold


def colorbar_strip(
    low: float, high: float, colormap: str = "Inferno", width: int = 256, height: int = 12
) -> np.ndarray:
    """A horizontal HWC uint8 strip of the colour scale from ``low`` (left) to ``high`` (right)."""
    row = np.linspace(low, high, width, dtype=np.float32)[None, :].repeat(height, 0)
    return heatmap_rgb(row, low, high, colormap)


# --- the images of a run's rows ---------------------------------------------------------------


def run_data_root(config: dict[str, Any]) -> PurePath | None:
    """The folder the run's images were read from (``config["data"]["root"]``), if recorded."""
    data = config.get("data") or {}
    root = data.get("root") or data.get("path")
    return PurePath(root) if root else None


def run_row_images(
    run: Any, rows: Sequence[int], synthetic: Sequence[np.ndarray] | None = None
) -> list[np.ndarray | None]:
    """HWC uint8 images of rows of ``run.results``; None where one cannot be read (see ``run_row_image``).
    ``synthetic``: the run's ``synthetic_images`` if the caller keeps them, else pasted here once."""
    out: list[np.ndarray | None] = []
    for row in rows:
        try:
            if str(run.results["role"][int(row)]) == "synthetic" and synthetic is None:
                synthetic = synthetic_images(run)
            out.append(run_row_image(run, int(row), synthetic))
        except ImageError:
            out.append(None)
    return out


def run_row_image(run: Any, row: int, synthetic: list[np.ndarray] | None = None) -> np.ndarray:
    """The HWC uint8 image of one row of ``run.results``; raises ImageError saying why it cannot.

    Rows are read from the run's data folder by ``rel_path``. A synthetic row's ``rel_path`` is the
    hold-out image it was pasted onto, so synthetic rows are pasted again exactly as training did
    (``adcore.training.synthetic_defects`` on the hold-out images, same seed): none is stored.
    ``synthetic`` is that list of pasted images if the caller has it already.
    """
    results = run.results
    if str(results["role"][row]) != "synthetic":
        return _read_run_file(run, str(results["rel_path"][row]))
    synthetic = synthetic_images(run) if synthetic is None else synthetic
    position = int(np.count_nonzero(results["role"][:row] == "synthetic"))
    if position >= len(synthetic):
        raise ImageError("the synthetic defects of this run cannot be pasted again")
    return synthetic[position]


def _read_run_file(run: Any, rel_path: str) -> np.ndarray:
    root = run_data_root(run.config)
    if root is None:
        raise ImageError("the run does not record where its images are")
    try:
        return load_image(Path(root) / rel_path)
    except ImageError as exc:
        raise ImageError(f"{Path(root) / rel_path}: {exc}") from None


def synthetic_images(run: Any) -> list[np.ndarray]:
    """The synthetic defects of a run (HWC uint8, in the order of its synthetic rows), pasted again
    onto its hold-out images as training did; raises ImageError if one cannot be read."""
    from adcore.photo_cache import shrink
    from adcore.training import synthetic_defects  # imports torch: only when a synthetic row is shown

    rel, role = run.results["rel_path"], run.results["role"]
    # At the size training kept the photos at (runs before the photo cache: as they are).
    side = run.config.get("max_photo_side")
    holdout = [shrink(_read_run_file(run, str(r)), side) for r in rel[role == "holdout"]]
    images, _ = synthetic_defects(holdout, int((run.config.get("params") or {}).get("seed", 0)))
    return images


def row_name(results: dict[str, np.ndarray], row: int) -> str:
    """What a row is called on the pages: its file, or "synthetic scar on <file>"."""
    rel = str(results["rel_path"][row])
    if str(results["role"][row]) == "synthetic":
        return f"{synthetic_group_name(str(results['label'][row]))} on {rel}"
    return rel


# --- scores and the threshold -----------------------------------------------------------------
# Groups are the legend groups of adcore.projection.map_groups: "train normal", "hold-out normal",
# "test normal", each real defect class, and "synthetic cutpaste" / "synthetic scar".

NORMAL_COLORS = {"train normal": "#aab2bd", "hold-out normal": "#2f6fb0", "test normal": "#4fb0c6"}
DEFECT_COLORS = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#a50f15", "#f4a259", "#6b3e26")
SYNTHETIC_COLORS = ("#7b4fbf", "#1b9e77", "#e7298a")  # purple, green, magenta: told apart at a glance
SYNTHETIC_SYMBOLS = ("diamond", "triangle-up", "star")
SCORE_COLORSCALE = "YlOrRd"  # pale yellow (low) to dark red (high): the lowest scores look like the least
THRESHOLD_COLOR = "#222222"
MAX_BOX_POINTS = 400  # a group with more images shows its box and outliers, not every point
MAX_CURVE_POINTS = 400  # ROC / PR curves sent to the browser are thinned to this many points
FLAGGED = "flagged"


def group_kind(group: str) -> str:
    """"normal", "synthetic" or "defect" for a legend group name."""
    if group in NORMAL_COLORS:
        return "normal"
    return "synthetic" if group.startswith("synthetic ") else "defect"


def group_colors(order: Sequence[str]) -> dict[str, str]:
    """A colour per group: blues and greys for normals, reds and oranges for defects, purples for synthetic."""
    colours, defects, synthetic = {}, 0, 0
    for group in order:
        kind = group_kind(group)
        if kind == "normal":
            colours[group] = NORMAL_COLORS[group]
        elif kind == "synthetic":
            colours[group] = SYNTHETIC_COLORS[synthetic % len(SYNTHETIC_COLORS)]
            synthetic += 1
        else:
            colours[group] = DEFECT_COLORS[defects % len(DEFECT_COLORS)]
            defects += 1
    return colours


def group_symbols(order: Sequence[str], three: bool = False) -> dict[str, str]:
    """A marker symbol per group: circles for normals, crosses for defects, and a different shape
    for each synthetic kind (they also differ in colour, see ``group_colors``)."""
    symbols, synthetic = {}, 0
    for group in order:
        kind = group_kind(group)
        if kind == "synthetic":
            symbols[group] = "diamond" if three else SYNTHETIC_SYMBOLS[synthetic % len(SYNTHETIC_SYMBOLS)]
            synthetic += 1
        else:
            symbols[group] = "circle" if kind == "normal" else ("cross" if three else "x")
    return symbols


def group_label(group: str, n: int | None = None) -> str:
    """How a group is named in legends: synthetic groups always say that they are not real."""
    text = f"{group} (not real)" if group_kind(group) == "synthetic" else group
    return text if n is None else f"{text} · {n}"


@dataclass
class ScoreContext:
    """What the Scores page needs of one run's scores that does not change with the threshold:
    built once per run (and scorer), then every slider move is cheap (``threshold_view``)."""

    run: Any  # adcore.runs.Run (results are read, never changed)
    scores: np.ndarray  # (N,) every row of run.results, higher = more anomalous
    groups: np.ndarray  # (N,) legend group per row
    order: list[str]  # legend order of the groups present
    names: list[str]  # (N,) row names for hover texts and captions
    rows: dict[str, np.ndarray]  # group -> its rows
    reference_rows: np.ndarray  # the normal rows a false-alarm target is set from
    reference_source: str  # which normal images those are, in words (adcore.threshold)
    normal_rows: np.ndarray  # normal rows not trained on: where false alarms are counted
    real_defect_rows: np.ndarray
    synthetic_rows: np.ndarray
    real: Any  # ScoreTable of test normals vs real test defects, or None
    synthetic: Any  # ScoreTable of hold-out normals vs synthetic defects, or None
    reference_warning: str = ""

    @property
    def has_real_defects(self) -> bool:
        return self.real is not None

    @property
    def evaluation(self) -> tuple[Any, str]:
        """The labelled table the ROC/PR curves and the confusion matrix use, and its description."""
        if self.real is not None:
            return self.real, "test normals vs real defects"
        return self.synthetic, "hold-out normals vs synthetic defects (not real)"


def score_context(run: Any, scores: np.ndarray | None = None) -> ScoreContext:
    """Group a run's scores (``scores`` replaces the stored ones, e.g. from an embedding scorer)."""
    tables = run_tables(run, scores)
    groups = map_groups(run)
    order = group_order(groups)
    rows = {g: np.flatnonzero(groups == g) for g in order}
    warning = ""
    if tables.holdout_normal.size:
        reference, source = tables.holdout_normal, HOLDOUT_SOURCE
    else:
        reference, source = tables.fit_normal, FIT_SOURCE
        warning = (
            "No normal images were held out from training, so thresholds are judged on training images "
            "the model has seen: expect more false alarms than stated. Retrain with a hold-out fraction."
        )
    defects = np.concatenate([np.zeros(0, np.intp), *tables.test_defects.values()])
    synthetic = np.concatenate([np.zeros(0, np.intp), *tables.synthetic.values()])
    synthetic_table = None
    if tables.holdout_normal.size and synthetic.size:
        both = np.concatenate([tables.holdout_normal, synthetic])
        synthetic_table = ScoreTable(tables.scores[both], np.arange(both.size) >= tables.holdout_normal.size)
    real = tables.test_table()
    for table in (real, synthetic_table):
        if table is not None:  # computed here, once, rather than on the first slider move
            table.roc, table.pr
    results = run.results
    return ScoreContext(
        run=run,
        scores=tables.scores,
        groups=groups,
        order=order,
        names=[row_name(results, i) for i in range(tables.scores.size)],
        rows=rows,
        reference_rows=reference,
        reference_source=source,
        normal_rows=np.sort(np.concatenate([tables.holdout_normal, tables.test_normal])),
        real_defect_rows=np.sort(defects),
        synthetic_rows=np.sort(synthetic),
        real=real,
        synthetic=synthetic_table,
        reference_warning=warning,
    )


@dataclass(frozen=True)
class SliderRange:
    low: float
    high: float
    step: float
    format: str  # printf format for st.slider

    def clip(self, value: float) -> float:
        return float(min(self.high, max(self.low, value)))


def threshold_slider_range(scores: np.ndarray, steps: int = 1000) -> SliderRange:
    """A slider range a little wider than ``scores`` with a round step of about span/``steps``."""
    low, high = float(np.min(scores)), float(np.max(scores))
    span = high - low if high > low else max(abs(high), 1.0)
    step = 10.0 ** math.floor(math.log10(span / steps))
    decimals = max(0, -math.floor(math.log10(step)))
    pad = max(span * 0.02, step)
    low = math.floor((low - pad) / step) * step
    high = math.ceil((high + pad) / step) * step
    return SliderRange(round(low, decimals), round(high, decimals), step, f"%.{decimals}f")


@dataclass
class ThresholdView:
    """Everything the Scores page shows for one threshold."""

    threshold: float
    point: Any  # OperatingPoint on ``evaluation_label``'s images, or None
    evaluation_label: str
    estimate: Any  # FalseAlarmEstimate on the reference normals
    recalls: list[Any]  # RecallEstimate per real defect class, then per synthetic kind
    group_rows: list[dict[str, Any]]
    distribution: go.Figure
    roc: go.Figure | None
    pr: go.Figure | None
    gallery: dict[str, tuple[np.ndarray, int]]  # title -> (rows shown, how many in all)


def threshold_view(
    ctx: ScoreContext,
    threshold: float,
    *,
    chosen_from_reference: bool = False,
    show_train: bool = False,
    gallery_size: int = 8,
    height: int = 380,
) -> ThresholdView:
    """Metrics, figures and gallery rows at ``threshold`` (flagged: score >= threshold)."""
    t = float(threshold)
    table, label = ctx.evaluation
    point = table.at(t) if table is not None else None
    estimate = false_alarm_estimate(
        ctx.scores[ctx.reference_rows], t, chosen_from_these=chosen_from_reference, source=ctx.reference_source
    )
    recalls = [*defect_recall(ctx.run, t, ctx.scores).values(), *synthetic_recall(ctx.run, t, ctx.scores).values()]
    shown = [g for g in ctx.order if show_train or g != "train normal"]
    return ThresholdView(
        threshold=t,
        point=point,
        evaluation_label=label,
        estimate=estimate,
        recalls=recalls,
        group_rows=group_rate_rows(ctx, t, shown),
        distribution=score_distribution_figure(ctx, t, shown, height=height),
        roc=None if table is None else roc_figure(table.roc, point, label),
        pr=None if table is None else pr_figure(table.pr, point, label),
        gallery=gallery_rows(ctx, t, gallery_size),
    )


def group_rate_rows(ctx: ScoreContext, threshold: float, groups: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group: its images, how many the threshold flags, and what flagging means there."""
    out = []
    for group in groups:
        values = ctx.scores[ctx.rows[group]]
        flagged = int(np.count_nonzero(is_anomalous(values, threshold)))
        kind = group_kind(group)
        meaning = {
            "normal": "false alarms" if group != "train normal" else "flagged (seen in training)",
            "defect": "caught",
            "synthetic": "caught (synthetic, not real)",
        }[kind]
        out.append(
            {
                "group": group_label(group),
                "images": int(values.size),
                FLAGGED: flagged,
                "share flagged": flagged / values.size if values.size else None,
                "flagged means": meaning,
            }
        )
    return out


def confusion_table(point: Any) -> "pd.DataFrame":
    """A 2x2 confusion matrix: rows what an image is, columns what the threshold says."""
    import pandas as pd

    return pd.DataFrame(
        {"flagged": [point.tp, point.fp], "passed": [point.fn, point.tn]},
        index=pd.Index(["defect", "normal"], name="actually"),
    )


FALSE_ALARMS_TITLE = "False alarms among hold-out and test normals"


def gallery_rows(ctx: ScoreContext, threshold: float, k: int = 8) -> dict[str, tuple[np.ndarray, int]]:
    """Rows worth looking at: nearest the threshold, false alarms (highest first) and misses
    (lowest first, on real defects, else on synthetic ones); each with how many there are in all."""
    scores = ctx.scores
    candidates = np.concatenate([ctx.normal_rows, ctx.real_defect_rows, ctx.synthetic_rows])
    nearest = candidates[np.argsort(np.abs(scores[candidates] - threshold), kind="stable")[:k]]
    nearest = nearest[np.argsort(scores[nearest], kind="stable")]
    alarms = ctx.normal_rows[is_anomalous(scores[ctx.normal_rows], threshold)]
    alarms = alarms[np.argsort(-scores[alarms], kind="stable")]
    defects = ctx.real_defect_rows if ctx.real_defect_rows.size else ctx.synthetic_rows
    misses = defects[~is_anomalous(scores[defects], threshold)]
    misses = misses[np.argsort(scores[misses], kind="stable")]
    miss_title = "Missed defects" if ctx.real_defect_rows.size else "Missed synthetic defects (not real)"
    # Each title says what it counts: false alarms here are among every normal not trained on (the
    # hold-out ones too), where the False alarms metric counts the test normals alone.
    return {
        "Nearest the threshold": (nearest, int(nearest.size)),
        FALSE_ALARMS_TITLE: (alarms[:k], int(alarms.size)),
        miss_title: (misses[:k], int(misses.size)),
    }


def _hex_rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def score_distribution_figure(
    ctx: ScoreContext, threshold: float | None, groups: Sequence[str] | None = None, *, height: int = 380
) -> go.Figure:
    """Scores of each group as a box with its images as points, one row per group, and the
    threshold as a dashed line over a shaded "flagged" side."""
    groups = list(ctx.order if groups is None else groups)
    colours = group_colors(ctx.order)
    fig = go.Figure()
    rng = np.random.default_rng(0)
    for group in groups:
        rows = ctx.rows[group]
        if rows.size > 5 * MAX_BOX_POINTS:  # the browser gets a fair sample, not 100,000 numbers
            rows = np.sort(rng.choice(rows, 5 * MAX_BOX_POINTS, replace=False))
        few = ctx.rows[group].size <= MAX_BOX_POINTS
        colour = colours[group]
        fig.add_trace(
            go.Box(
                x=ctx.scores[rows],
                name=group_label(group, int(ctx.rows[group].size)),
                orientation="h",
                boxpoints="all" if few else "outliers",
                jitter=0.6,
                pointpos=0,
                marker={"color": colour, "size": 6, "opacity": 0.8,
                        "symbol": "diamond" if group_kind(group) == "synthetic" else "circle"},
                line={"color": colour, "width": 1.5},
                fillcolor=_hex_rgba(colour, 0.12),
                text=[ctx.names[i] for i in rows] if few else None,
                hoveron="points" if few else "boxes",
                hovertemplate="%{text}<br>score %{x:.4g}<extra></extra>" if few else None,
                showlegend=False,
            )
        )
    fig.update_layout(
        height=max(height, 60 + 46 * len(groups)),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": "Anomaly scores by group", "font": {"size": 14}},
        xaxis={"title": {"text": "anomaly score (higher = more anomalous)", "standoff": 8}},
        yaxis={"autorange": "reversed"},
    )
    _room_for_labels(fig)
    low, high, beyond = _score_axis(ctx, groups, threshold)
    pad = 0.04 * (high - low) or 1.0
    fig.update_xaxes(range=[low - pad, high + pad])
    if beyond:  # said under the axis, where it covers no point
        fig.update_xaxes(title_text=f"anomaly score (higher = more anomalous)<br><sup>{beyond} lie further right</sup>")
    if threshold is not None:
        _add_threshold(fig, threshold, low - pad, high + pad)
    return fig


def _score_axis(ctx: ScoreContext, groups: Sequence[str], threshold: float | None) -> tuple[float, float, str]:
    """(low, high, note): the score range to show. Synthetic CutPaste patches can score far above
    everything real; they must not squeeze the real groups into a corner, so the axis stops half
    its width beyond the real scores and the note says what lies further right."""
    values = [ctx.scores[ctx.rows[g]] for g in groups if ctx.rows[g].size]
    real = [v for g, v in zip(groups, values) if group_kind(g) != "synthetic"]
    every = np.concatenate(values) if values else ctx.scores
    core = np.concatenate(real) if real else every
    extra = [] if threshold is None else [threshold]
    low, high = float(min(every.min(), *extra)), float(max(every.max(), *extra))
    core_high = float(max(core.max(), *extra))
    limit = core_high + 0.5 * (core_high - low)
    if high <= limit or not real:
        return low, high, ""
    outside = int(np.count_nonzero(every > limit))
    return low, limit, f"{outside} synthetic score(s) up to {high:.3g}"


def _add_threshold(fig: go.Figure, threshold: float, left: float, right: float) -> None:
    # Vertically in paper coordinates, so the line spans every row whatever the y axis does.
    fig.add_shape(
        type="rect", xref="x", yref="paper", x0=threshold, x1=right, y0=0, y1=1,
        fillcolor="rgba(214,39,40,0.06)", line={"width": 0}, layer="below",
    )  # fmt: skip
    fig.add_shape(
        type="line", xref="x", yref="paper", x0=threshold, x1=threshold, y0=0, y1=1,
        line={"color": THRESHOLD_COLOR, "width": 2, "dash": "dash"},
    )  # fmt: skip
    fig.add_annotation(
        x=threshold, y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
        # Written on the side of the line with room for it, so it is not cut off at the edge.
        text=f"threshold {threshold:.4g} → flagged", xanchor="left" if threshold < (left + right) / 2 else "right",
        font={"size": 12},
    )  # fmt: skip


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` of n curve points, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def roc_figure(curve: Any, point: Any, label: str = "", *, height: int = 340) -> go.Figure:
    """ROC curve (false-alarm rate vs recall) with the current operating point marked."""
    keep = _thin(curve.false_alarm_rate.size)
    area = auc(curve.false_alarm_rate, curve.recall)
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbbbbb", "dash": "dot"}, hoverinfo="skip"),
            go.Scatter(
                x=curve.false_alarm_rate[keep], y=curve.recall[keep], mode="lines",
                line={"width": 2, "color": "#2f6fb0"},
                hovertemplate="false alarms %{x:.1%}<br>recall %{y:.1%}<extra></extra>",
            ),
        ]
    )  # fmt: skip
    if point is not None and point.false_alarm_rate is not None and point.recall is not None:
        _mark(fig, point.false_alarm_rate, point.recall)
    _curve_layout(fig, f"ROC · AUROC {area:.3f}", label, "false-alarm rate", "recall (defects caught)", height)
    return fig


def pr_figure(curve: Any, point: Any, label: str = "", *, height: int = 340) -> go.Figure:
    """Precision-recall curve with the current operating point marked, and the no-skill level."""
    keep = _thin(curve.recall.size)
    prevalence = float(curve.precision[0]) if curve.precision.size else 0.0  # at the lowest threshold
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1], y=[prevalence] * 2, mode="lines", line={"color": "#bbbbbb", "dash": "dot"},
                       hoverinfo="skip"),
            go.Scatter(
                x=curve.recall[keep], y=curve.precision[keep], mode="lines", line={"width": 2, "color": "#2f6fb0"},
                hovertemplate="recall %{x:.1%}<br>precision %{y:.1%}<extra></extra>",
            ),
        ]
    )  # fmt: skip
    if point is not None and point.precision is not None and point.recall is not None:
        _mark(fig, point.recall, point.precision)
    y_title = "precision (flags that are defects)"
    _curve_layout(fig, "Precision vs recall", label, "recall (defects caught)", y_title, height)
    return fig


def _mark(fig: go.Figure, x: float, y: float) -> None:
    fig.add_trace(
        go.Scatter(
            x=[x], y=[y], mode="markers",
            marker={"size": 13, "color": "#d62728", "line": {"width": 2, "color": "white"}},
            hovertemplate="this threshold<br>%{x:.1%}, %{y:.1%}<extra></extra>",
        )
    )  # fmt: skip


def _curve_layout(fig: go.Figure, title: str, label: str, x: str, y: str, height: int) -> None:
    subtitle = f"<br><sup>{label}</sup>" if label else ""
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 56, "b": 10},
        title={"text": title + subtitle, "font": {"size": 14}},
        xaxis={"title": {"text": x, "standoff": 8}, "range": [-0.02, 1.02], "tickformat": ".0%"},
        yaxis={"title": {"text": y, "standoff": 8}, "range": [-0.02, 1.02], "tickformat": ".0%"},
        showlegend=False,
    )
    _room_for_labels(fig)


def _room_for_labels(fig: go.Figure) -> None:
    """Let the margins grow to fit tick labels and axis titles. Streamlit's theme does this on the
    pages; a figure drawn anywhere else (the HTML report) would otherwise clip its labels to the
    last few characters ("48" of "train normal · 48", "%" of "100%")."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)


def score_history_figure(history: dict[str, np.ndarray], *, height: int = 320) -> go.Figure:
    """Score distributions per training epoch (``adcore.projection.score_history``), a box per group."""
    groups = list(dict.fromkeys(history["group"].tolist()))
    colours = group_colors(groups)
    fig = go.Figure()
    for group in groups:
        pick = history["group"] == group
        fig.add_trace(
            go.Box(
                x=history["epoch"][pick], y=history["score"][pick], name=group_label(group),
                marker={"color": colours[group]}, boxpoints=False,
            )
        )  # fmt: skip
    fig.update_layout(
        height=height,
        boxmode="group",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": "Scores during training", "font": {"size": 14}},
        xaxis={"title": {"text": "epoch", "standoff": 8}},
        yaxis={"title": {"text": "anomaly score", "standoff": 8}},
        legend={"orientation": "h", "y": -0.25},
    )
    _room_for_labels(fig)
    return fig


# --- embedding maps ---------------------------------------------------------------------------


def embedding_figure(
    coords: np.ndarray,
    groups: np.ndarray,
    order: Sequence[str],
    scores: np.ndarray,
    names: Sequence[str],
    *,
    color_by: str = "group",
    height: int = 600,
) -> go.Figure:
    """A 2-D or 3-D scatter of map ``coords`` (N, 2|3), one legend entry per group, or coloured by
    score. Every point carries ``customdata = [row, score]`` so a selection maps back to rows."""
    dims = coords.shape[1]
    three = dims == 3
    trace = go.Scatter3d if three else (go.Scattergl if len(coords) > 5000 else go.Scatter)
    colours = group_colors(order)
    symbols = group_symbols(order, three)
    hover = "<b>%{text}</b><br>%{meta}<br>score %{customdata[1]:.4g}<extra></extra>"
    # The colour range leaves out the extreme 1 % at either end, so one outlier cannot squeeze every
    # other image into the middle of the scale.
    low, high = (float(v) for v in np.percentile(scores, [1, 99])) if len(scores) else (0.0, 1.0)
    fig = go.Figure()
    for group in order:
        rows = np.flatnonzero(groups == group)
        xyz = {"x": coords[rows, 0], "y": coords[rows, 1]}
        if three:
            xyz["z"] = coords[rows, 2]
        marker: dict[str, Any] = {"size": 4 if three else 8, "symbol": symbols[group], "opacity": 0.85}
        if color_by == "score":
            marker.update(color=scores[rows], colorscale=SCORE_COLORSCALE, cmin=low, cmax=max(high, low + 1e-12),
                          line={"width": 0.5, "color": "#777777"}, showscale=group == order[0],
                          colorbar={"title": {"text": "score"}})  # fmt: skip
        else:
            marker["color"] = colours[group]
        fig.add_trace(
            trace(
                **xyz,
                mode="markers",
                name=group_label(group, int(rows.size)),
                marker=marker,
                text=[names[i] for i in rows],
                meta=group_label(group),
                customdata=np.column_stack([rows, scores[rows]]),
                hovertemplate=hover,
            )
        )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"title": {"text": "click to hide:"}, "itemsizing": "constant", "orientation": "h", "y": -0.02,
                "yanchor": "top"},
    )
    # 2-D: no drag mode of our own, so Streamlit's default (pan) applies, in which a click selects
    # the point under it; in a box or lasso mode (chosen from the tool bar) clicks select nothing.
    if three:
        fig.update_layout(dragmode="orbit")
    if not three:  # a map's axes mean nothing: no numbers, and no zero lines across it
        fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
        fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def selected_rows(selection: Any) -> list[int]:
    """Result rows of the points in a Streamlit plotly selection (``customdata[0]`` of each point)."""
    rows = []
    for point in (selection or {}).get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, dict):  # the browser may send an array as {"0": row, "1": score}
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        if isinstance(data, (list, tuple)) and data:
            rows.append(int(data[0]))
        elif isinstance(data, (int, float)):
            rows.append(int(data))
    return list(dict.fromkeys(rows))


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
        "image size": (config.get("params") or {}).get("image_size"),
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


def roc_overlay_figure(
    curves: dict[str, tuple[Any, Any]], *, height: int = 420, title: str = "ROC curves"
) -> go.Figure:
    """Several runs' ROC curves in one figure: ``{label: (RocCurve, OperatingPoint or None)}``."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbbbbb", "dash": "dot"},
                               hoverinfo="skip", showlegend=False))  # fmt: skip
    palette = ("#2f6fb0", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2")
    for i, (label, (curve, point)) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        keep = _thin(curve.false_alarm_rate.size)
        area = auc(curve.false_alarm_rate, curve.recall)
        fig.add_trace(go.Scatter(
            x=curve.false_alarm_rate[keep], y=curve.recall[keep], mode="lines", name=f"{label} · AUROC {area:.3f}",
            line={"width": 2.5, "color": colour}, legendgroup=label,
            hovertemplate=f"{label}<br>false alarms %{{x:.1%}}<br>recall %{{y:.1%}}<extra></extra>",
        ))  # fmt: skip
        if point is not None and point.false_alarm_rate is not None:
            fig.add_trace(go.Scatter(
                x=[point.false_alarm_rate], y=[point.recall], mode="markers", legendgroup=label, showlegend=False,
                marker={"size": 12, "color": colour, "line": {"width": 2, "color": "white"}},
                hovertemplate=f"{label} at its threshold<br>%{{x:.1%}}, %{{y:.1%}}<extra></extra>",
            ))  # fmt: skip
    note = "dots: each run's chosen threshold"
    _curve_layout(fig, title, note, "false-alarm rate", "recall (defects caught)", height)
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
    return fig
