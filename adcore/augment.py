"""Image augmentations (crop, colour jitter, CutPaste, CutPaste-scar) as pure functions of (image, rng).

Every augmentation takes an HWC uint8 RGB image and a ``np.random.Generator`` and returns an
``Augmented``; all randomness comes from that generator, so the same seed gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from adcore.registry import Entry, Param, Registry, validate_params

Box = tuple[float, float, float, float]
Outline = list[tuple[float, float]]


@dataclass(frozen=True)
class Augmented:
    """The result of one augmentation (or of a ``compose``).

    image:   HWC uint8 RGB, the size of the input (a crop is resized back to it).
    mask:    HxW bool, the pixels a local augmentation (CutPaste, scar) changed; None when the
             augmentation is global (crop, jitter) and "changed" would mean every pixel.
    outline: polygon (x, y) of the pasted patch in output pixel coordinates (pixel edges, so a
             patch covering columns 3..5 spans x = 3.0 .. 6.0); None if nothing was pasted.
    box:     for geometric steps, the input region (left, top, right, bottom) that was resized to
             fill the output; None when the step keeps the geometry. ``compose`` uses it to carry
             earlier masks and outlines through a crop.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    outline: Outline | None = None
    box: Box | None = None


AUGMENTATIONS: Registry[Entry] = Registry("augmentation")


def _register(name: str, params: list[Param], help: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable) -> Callable:
        AUGMENTATIONS.register(name)(Entry(name, fn, params, help))
        return fn

    return decorator


def get_augmentation(name: str) -> Entry:
    return AUGMENTATIONS.get(name)


def apply(name: str, image: np.ndarray, rng: np.random.Generator, **params: Any) -> Augmented:
    """Run one registered augmentation on an HWC uint8 RGB image; bad names or params raise ValueError."""
    entry = get_augmentation(name)
    _check_image(image)
    try:
        values = validate_params(entry.params, params)
    except ValueError as exc:
        raise ValueError(f"augmentation {name!r}: {exc}") from None
    return entry.fn(image, rng, **values)


def compose(
    specs: list[tuple[str, dict[str, Any]]], image: np.ndarray, rng: np.random.Generator
) -> Augmented:
    """Apply ``(name, params)`` steps in order to an HWC uint8 RGB image, all drawing from ``rng``.

    The mask is the union (OR) of the local masks (CutPaste, scar); global steps (jitter, crop)
    add nothing to it, so it marks where the synthetic defect is, not every pixel that changed.
    A later crop carries the mask along consistently: it is cropped to the crop box and resized to
    the output with nearest-neighbour sampling, and the outline is mapped by the same transform
    (it may then lie partly outside the image). With several pasting steps the outline is the
    last one's. ``box`` is the input region that the whole chain's output shows.
    """
    _check_image(image)
    mask: np.ndarray | None = None
    outline: Outline | None = None
    box: Box | None = None
    current = image.copy()
    for name, params in specs:
        step = apply(name, current, rng, **params)
        out_h, out_w = step.image.shape[:2]
        if step.box is not None:
            if mask is not None:
                mask = _resize_mask(mask, step.box, (out_h, out_w))
            if outline is not None:
                outline = [_map_point(p, step.box, (out_h, out_w)) for p in outline]
            box = step.box if box is None else _compose_boxes(box, step.box, current.shape[:2])
        if step.mask is not None:
            mask = step.mask.copy() if mask is None else mask | step.mask
        if step.outline is not None:
            outline = list(step.outline)
        current = step.image
    return Augmented(current, mask, outline, box)


# --- random resized crop ------------------------------------------------------------------------


@_register(
    "random_resized_crop",
    [
        Param("min_scale", float, 0.6, "smallest crop, as a fraction of the image area", low=0.05, high=1.0),
        Param("max_scale", float, 1.0, "largest crop, as a fraction of the image area", low=0.05, high=1.0),
        Param("min_ratio", float, 3 / 4, "narrowest crop shape (width / height)", low=0.2, high=5.0),
        Param("max_ratio", float, 4 / 3, "widest crop shape (width / height)", low=0.2, high=5.0),
    ],
    "Zoom into a random part of the photo and stretch it back to full size.",
)
def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    min_scale: float = 0.6,
    max_scale: float = 1.0,
    min_ratio: float = 3 / 4,
    max_ratio: float = 4 / 3,
) -> Augmented:
    """Crop a random region of HWC uint8 RGB ``image`` and resize it (bilinear) back to the input size.

    The region is drawn as torchvision's RandomResizedCrop draws it: area uniform in
    [min_scale, max_scale] of the image, aspect ratio log-uniform in [min_ratio, max_ratio],
    ten tries, then a centre crop with the ratio clamped into range.
    """
    if min_scale > max_scale:
        raise ValueError(f"min_scale {min_scale} is above max_scale {max_scale}")
    if min_ratio > max_ratio:
        raise ValueError(f"min_ratio {min_ratio} is above max_ratio {max_ratio}")
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(min_ratio), math.log(max_ratio))
    for _ in range(10):
        target_area = area * rng.uniform(min_scale, max_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        image_ratio = width / height
        if image_ratio < min_ratio:
            w, h = width, round(width / min_ratio)
        elif image_ratio > max_ratio:
            w, h = round(height * max_ratio), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    box = (float(left), float(top), float(left + w), float(top + h))
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, box=box)
    return Augmented(np.array(resized), None, None, box)


# --- colour jitter ------------------------------------------------------------------------------


@_register(
    "color_jitter",
    [
        Param("brightness", float, 0.1, "largest relative change of brightness", low=0.0, high=1.0),
        Param("contrast", float, 0.1, "largest relative change of contrast", low=0.0, high=1.0),
        Param("saturation", float, 0.1, "largest relative change of colour saturation", low=0.0, high=1.0),
        Param("hue", float, 0.0, "largest hue shift, as a fraction of the colour wheel", low=0.0, high=0.5),
    ],
    "Randomly change brightness, contrast, saturation and hue a little.",
)
def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    hue: float = 0.0,
) -> Augmented:
    """Jitter HWC uint8 RGB ``image`` like torchvision's ColorJitter: factors in [1-x, 1+x], random order."""
    return Augmented(_jitter(image, rng, brightness, contrast, saturation, hue))


def _jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> np.ndarray:
    """HWC uint8 RGB in and out. A zero strength skips that adjustment, so all zeros is the identity."""
    order = rng.permutation(4)
    factors = [
        rng.uniform(max(0.0, 1 - brightness), 1 + brightness) if brightness > 0 else None,
        rng.uniform(max(0.0, 1 - contrast), 1 + contrast) if contrast > 0 else None,
        rng.uniform(max(0.0, 1 - saturation), 1 + saturation) if saturation > 0 else None,
        rng.uniform(-hue, hue) if hue > 0 else None,
    ]
    if all(f is None for f in factors):
        return image.copy()
    x = image.astype(np.float32)
    for op in order:
        f = factors[op]
        if f is None:
            continue
        if op == 0:
            x = x * f
        elif op == 1:
            x = x * f + _gray(x).mean() * (1 - f)
        elif op == 2:
            x = x * f + _gray(x)[..., None] * (1 - f)
        else:
            x = _shift_hue(x, f)
        np.clip(x, 0.0, 255.0, out=x)
    return np.rint(x).astype(np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
    # The ITU-R 601 luma weights torchvision uses for rgb_to_grayscale.
    return x[..., 0] * 0.2989 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _shift_hue(rgb: np.ndarray, shift: float) -> np.ndarray:
    """HWC float RGB (any scale) with its hue turned by ``shift`` of a full turn, as torchvision's
    adjust_hue does through HSV; value and saturation are kept, so the max and min channel are too."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    v = np.maximum(np.maximum(r, g), b)
    delta = v - np.minimum(np.minimum(r, g), b)
    safe = np.where(delta > 0, delta, 1)
    # Hue in sixths of a turn; ties go to red, then green, like the usual RGB -> HSV.
    h6 = np.where(v == r, (g - b) / safe, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h6 = h6 + 6 * shift
    out = np.empty_like(rgb)
    # HSV -> RGB without branching on the sector: channel = v - delta * clip(min(k, 4 - k), 0, 1).
    for c, n in enumerate((5, 3, 1)):
        k = h6 + n
        k -= 6 * np.floor(k / 6)
        out[..., c] = v - delta * np.clip(np.minimum(k, 4 - k), 0, 1)
    return out


# --- CutPaste -----------------------------------------------------------------------------------

# Li et al. 2021, section 3.1: patch area 2-15 % of the image, aspect ratio in [0.3, 1) U (1, 3.3].
_ASPECT_LOW, _ASPECT_HIGH = 0.3, 3.3
_PATCH_JITTER = Param(
    "patch_jitter",
    float,
    0.1,
    "colour jitter on the pasted patch (brightness, contrast, saturation, hue); 0 = none",
    low=0.0,
    high=0.5,
)


@_register(
    "cutpaste",
    [
        Param("area_min", float, 0.02, "smallest patch, as a fraction of the image area", low=0.001, high=0.5),
        Param("area_max", float, 0.15, "largest patch, as a fraction of the image area", low=0.001, high=0.5),
        _PATCH_JITTER,
    ],
    "Cut a rectangle from the photo and paste it somewhere else, like a small defect.",
)
def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    area_min: float = 0.02,
    area_max: float = 0.15,
    patch_jitter: float = 0.1,
) -> Augmented:
    """CutPaste on HWC uint8 RGB ``image``: a jittered rectangle copied to an independent random spot.

    The aspect ratio (width / height) picks the branch [0.3, 1) or (1, 3.3] with probability 1/2 and
    is uniform within it. Width and height are rounded to whole pixels and the draw is repeated
    until the rounded patch still has its area and aspect ratio in range and fits in the image.
    """
    if area_min > area_max:
        raise ValueError(f"area_min {area_min} is above area_max {area_max}")
    height, width = image.shape[:2]
    area = height * width
    for _ in range(100):
        target = area * rng.uniform(area_min, area_max)
        aspect = rng.uniform(_ASPECT_LOW, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, _ASPECT_HIGH)
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if (
            0 < w <= width
            and 0 < h <= height
            and area_min <= w * h / area <= area_max
            and _ASPECT_LOW <= w / h <= _ASPECT_HIGH
        ):
            break
    else:
        raise ValueError(
            f"cannot fit a patch of {area_min:.0%}-{area_max:.0%} of a {width}x{height} image "
            f"with aspect ratio {_ASPECT_LOW}-{_ASPECT_HIGH}"
        )
    shape = np.ones((h, w), dtype=bool)
    return _paste(image, rng, shape, patch_jitter, [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])


@_register(
    "cutpaste_scar",
    [_PATCH_JITTER],
    "Copy a thin, tilted stripe of the photo somewhere else, like a scratch.",
)
def cutpaste_scar(image: np.ndarray, rng: np.random.Generator, patch_jitter: float = 0.1) -> Augmented:
    """CutPaste-scar on HWC uint8 RGB ``image``: a thin rectangle turned up to 45 degrees, pasted elsewhere.

    Width 2-16 px and length 10-25 px at a 256 px shorter side, scaled linearly with the shorter
    side (both at least 1 px, so tiny images still get a visible scar). The unrotated scar is
    ``width`` across (x) and ``length`` down (y); the outline's first edge is the width edge, the
    second the length edge, and the width edge's angle from the x axis is the rotation. A pixel
    belongs to the scar when its centre lies inside the rotated rectangle.
    """
    height, width = image.shape[:2]
    scale = min(height, width) / 256
    scar_w = rng.uniform(max(1.0, 2 * scale), max(1.0, 16 * scale))
    scar_l = rng.uniform(max(1.0, 10 * scale), max(1.0, 25 * scale))
    angle = math.radians(rng.uniform(-45.0, 45.0))
    cos, sin = math.cos(angle), math.sin(angle)
    half_w = abs(cos) * scar_w / 2 + abs(sin) * scar_l / 2
    half_h = abs(sin) * scar_w / 2 + abs(cos) * scar_l / 2
    box_w, box_h = math.ceil(2 * half_w), math.ceil(2 * half_h)
    if box_w > width or box_h > height:
        raise ValueError(f"a {box_w}x{box_h} scar does not fit in a {width}x{height} image")
    # Pixel centres relative to the canvas centre, projected on the scar's width and length axes.
    ys, xs = np.mgrid[0:box_h, 0:box_w]
    dx, dy = xs + 0.5 - box_w / 2, ys + 0.5 - box_h / 2
    across = dx * cos + dy * sin
    along = -dx * sin + dy * cos
    shape = (np.abs(across) <= scar_w / 2) & (np.abs(along) <= scar_l / 2)
    hw, hl = scar_w / 2, scar_l / 2
    corners = [(-hw, -hl), (hw, -hl), (hw, hl), (-hw, hl)]
    outline = [(box_w / 2 + u * cos - v * sin, box_h / 2 + u * sin + v * cos) for u, v in corners]
    return _paste(image, rng, shape, patch_jitter, outline)


def _paste(
    image: np.ndarray, rng: np.random.Generator, shape: np.ndarray, patch_jitter: float, outline: Outline
) -> Augmented:
    """Copy the pixels under ``shape`` (h x w bool) from a random source box to an independent
    random destination box of HWC uint8 RGB ``image``, jittering them; ``outline`` is in box coords."""
    height, width = image.shape[:2]
    h, w = shape.shape
    src_y, src_x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    dst_y, dst_x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    patch = image[src_y : src_y + h, src_x : src_x + w]
    patch = _jitter(patch, rng, patch_jitter, patch_jitter, patch_jitter, patch_jitter)
    out = image.copy()
    region = out[dst_y : dst_y + h, dst_x : dst_x + w]
    region[shape] = patch[shape]
    # The mask is what actually changed: a pasted pixel equal to the one it covers is not a defect.
    mask = np.zeros((height, width), dtype=bool)
    covered = image[dst_y : dst_y + h, dst_x : dst_x + w]
    mask[dst_y : dst_y + h, dst_x : dst_x + w] = np.any(region != covered, axis=-1)
    return Augmented(out, mask, [(dst_x + x, dst_y + y) for x, y in outline])


# --- helpers ------------------------------------------------------------------------------------


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        if isinstance(image, np.ndarray):
            got = f"{image.dtype} array of shape {image.shape}"
        else:
            got = type(image).__name__
        raise ValueError(f"expected an HWC uint8 RGB image (H x W x 3), got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")


def _resize_mask(mask: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """Crop an HxW bool mask to ``box`` and resize it to ``size`` (h, w) by nearest neighbour."""
    left, top, right, bottom = box
    out_h, out_w = size
    rows = np.floor(top + (np.arange(out_h) + 0.5) * (bottom - top) / out_h).astype(np.int64)
    cols = np.floor(left + (np.arange(out_w) + 0.5) * (right - left) / out_w).astype(np.int64)
    rows = np.clip(rows, 0, mask.shape[0] - 1)
    cols = np.clip(cols, 0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def _map_point(point: tuple[float, float], box: Box, size: tuple[int, int]) -> tuple[float, float]:
    """Where a point of the input lands in an output of ``size`` (h, w) that shows ``box``."""
    left, top, right, bottom = box
    out_h, out_w = size
    x, y = point
    return ((x - left) * out_w / (right - left), (y - top) * out_h / (bottom - top))


def _compose_boxes(outer: Box, inner: Box, outer_size: tuple[int, int]) -> Box:
    """``inner`` is a box in the output of a step that showed ``outer`` at ``outer_size`` (h, w);
    return the region of the original input that ``inner`` shows."""
    left, top, right, bottom = outer
    out_h, out_w = outer_size
    sx, sy = (right - left) / out_w, (bottom - top) / out_h
    return (left + inner[0] * sx, top + inner[1] * sy, left + inner[2] * sx, top + inner[3] * sy)
