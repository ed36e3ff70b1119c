"""Image drawing for the pages: thumbnails, outlines of defects and pasted patches, augmentation
previews and heat-map overlays. Images are HWC uint8 RGB throughout."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import plotly.colors as pc
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
