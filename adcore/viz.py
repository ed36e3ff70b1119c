"""Pure functions that turn images, augmentations, progress and runs into what a page shows.

Images are HWC uint8 RGB throughout; figures are plotly; nothing here knows Streamlit exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from scipy import ndimage

from adcore.augment import Augmented, Outline, compose
from adcore.data import ImageError, ImageRecord, load_image, load_mask

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
        return f"All {z['most_common_count']} images are {w}×{h} px."
    width = _span(z["min_width"], z["max_width"])
    height = _span(z["min_height"], z["max_height"])
    return (
        f"Widths {width} px, heights {height} px, {z['n_distinct']} distinct sizes; "
        f"most common {w}×{h} ({z['most_common_count']} images). "
        "Every image is squashed to the method's square image_size for training."
    )


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


def run_row(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """One row of the runs table from a run's ``config.json`` contents."""
    metrics = config.get("metrics") or {}
    data = config.get("data") or {}
    return {
        "name": config.get("name") or "",
        "method": config.get("method", ""),
        "created": (config.get("created") or "").replace("T", " "),
        "device": config.get("device", ""),
        "train s": config.get("train_seconds"),
        "budget stop": bool(config.get("stopped_by_budget")),
        "image AUROC": metrics.get("image_auroc"),
        "pixel AUROC": metrics.get("pixel_auroc"),
        "data": PurePath(data.get("root") or data.get("path") or "").name,
        "run id": run_id,
    }
