"""Synthetic defects for judging methods without labels: families that no method trains on.

A self-configuring method (``adcore.methods.auto``) needs to know which of its candidates finds
defects best, from normal photos alone. It pastes these defects onto normal photos kept out of
fitting and asks which candidate tells them from the clean ones, image by image and pixel by pixel.
CutPaste and CutPaste-scar (``adcore.augment``) are not enough for that: the methods that learn
pasted defects train on them, and measured on real sets they either saturate (every candidate
separates them perfectly) or rank candidates unlike real defects do. These families differ in kind
from pastes of the photo's own pixels:

- ``texture``: a Perlin-noise shaped region blended with another texture (DRAEM, Zavrtanik et al.
  2021, uses textures of the DTD set; here a rotated, recoloured part of the same photo, offline);
- ``spot``: a small dark or bright blob with a soft edge (dirt, pits, blowholes, burns);
- ``smudge``: a local blur with a slight shift in brightness (wear, a wiped or polished patch);
- ``line``: a thin curved dark or bright line (scratches, cracks, hairs).

Every function is pure in (image, rng): an HWC uint8 RGB image in, an ``Augmented`` out whose mask
is exactly the set of pixels the defect may change (pixels outside it are returned unchanged). The
strength of each defect is drawn from a range that reaches down to faint, so the separation stays
informative instead of saturating. Defects are placed where the photo has structure (weighted by
its local gradient energy), so on a part lying on a plain background they land on the part, where
real defects are.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from adcore.augment import Augmented

MIN_ALPHA = 0.3  # blend weights below this are cut to 0, so every masked pixel is visibly changed


def _centre(image: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    """A (y, x) drawn with probability proportional to the local gradient energy (plus a floor, so
    plain textures are sampled evenly), at least ``margin`` pixels from the edges where possible."""
    gray = image.astype(np.float32).mean(-1)
    h, w = gray.shape
    step = max(1, min(h, w) // 64)  # a coarse grid is enough to find where the part is
    small = gray[::step, ::step]
    energy = ndimage.uniform_filter(np.hypot(ndimage.sobel(small, 0), ndimage.sobel(small, 1)), size=3)
    # The least structured spot within the defect's reach: a centre counts as "on the part" only when
    # its whole neighbourhood is, not when it sits on the strong edge between a part and a plain background.
    reach = max(3, 2 * (margin // step) + 1)
    energy = ndimage.grey_erosion(energy, size=(reach, reach), mode="nearest")
    weight = energy + 0.1 * energy.mean() + 1e-6
    m = max(0, min(margin // step, (min(small.shape) - 1) // 2))
    if m:
        weight[:m], weight[-m:], weight[:, :m], weight[:, -m:] = 0, 0, 0, 0
    flat = weight.ravel() / weight.sum()
    k = int(rng.choice(flat.size, p=flat))
    y, x = divmod(k, small.shape[1])
    y = min(h - 1, y * step + int(rng.integers(0, step)))
    x = min(w - 1, x * step + int(rng.integers(0, step)))
    return y, x


def _blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> Augmented:
    """``image`` blended towards ``other`` (float HWC) by ``alpha`` (HxW in [0, 1]); weights below
    ``MIN_ALPHA`` are dropped, and the mask is exactly the pixels with a weight left."""
    alpha = np.where(alpha >= MIN_ALPHA, alpha, 0.0).astype(np.float32)
    mask = alpha > 0
    out = image.copy()
    a = alpha[mask][:, None]
    mixed = image[mask].astype(np.float32) * (1 - a) + np.asarray(other, np.float32)[mask] * a
    out[mask] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return Augmented(out, mask)


def perlin_noise(shape: tuple[int, int], scale: int, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise of ``shape`` with about ``scale`` pixels per lattice cell, in about [-1, 1]."""
    h, w = shape
    gy, gx = h // scale + 2, w // scale + 2
    angles = rng.uniform(0, 2 * np.pi, (gy, gx))
    grads = np.stack([np.cos(angles), np.sin(angles)], -1)
    ys, xs = np.mgrid[0:h, 0:w] / scale
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2)


def texture(image: np.ndarray, rng: np.random.Generator) -> Augmented:
    """A Perlin-shaped region (2-10 % of the photo) blended 40-100 % with a rotated, recoloured copy
    of another part of the photo."""
    h, w = image.shape[:2]
    side = min(h, w)
    radius = side * math.sqrt(rng.uniform(0.02, 0.10) / math.pi)
    cy, cx = _centre(image, rng, int(radius * 0.5))
    ys, xs = np.mgrid[0:h, 0:w]
    blob = 1 - np.hypot((ys - cy) / radius, (xs - cx) / radius)  # > 0 inside a disc
    noise = perlin_noise((h, w), max(4, int(radius / 1.5)), rng)
    region = np.clip((blob + 0.35 * noise) * 4, 0, 1)
    other = np.rot90(image, int(rng.integers(1, 4)))
    other = np.asarray(Image.fromarray(np.ascontiguousarray(other)).resize((w, h), Image.BILINEAR), np.float32)
    other = np.roll(other, (int(rng.integers(0, h)), int(rng.integers(0, w))), (0, 1))
    gain = rng.uniform(0.6, 1.4, 3).astype(np.float32)
    other = np.clip((other - other.mean()) * gain + other.mean() + rng.uniform(-40, 40), 0, 255)
    return _blend(image, other, region * rng.uniform(0.4, 1.0))


def spot(image: np.ndarray, rng: np.random.Generator) -> Augmented:
    """An elliptical dark or bright spot, 1.5-6 % of the shorter side across, with a soft edge."""
    h, w = image.shape[:2]
    radius = min(h, w) * rng.uniform(0.015, 0.06)
    ry, rx = radius * rng.uniform(0.6, 1.4), radius * rng.uniform(0.6, 1.4)
    cy, cx = _centre(image, rng, int(radius))
    t = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    dy, dx = ys - cy, xs - cx
    u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    r = np.hypot(u / rx, v / ry)
    region = np.clip((1.2 - r) / 0.4, 0, 1)
    level = rng.uniform(0, 60) if rng.random() < 0.5 else rng.uniform(195, 255)
    other = np.full(image.shape, level, np.float32)
    return _blend(image, other, region * rng.uniform(0.35, 0.9))


def smudge(image: np.ndarray, rng: np.random.Generator) -> Augmented:
    """A disc (5-12 % of the shorter side across) blurred and brightened or darkened by up to 15 %."""
    h, w = image.shape[:2]
    radius = min(h, w) * rng.uniform(0.05, 0.12)
    cy, cx = _centre(image, rng, int(radius))
    ys, xs = np.mgrid[0:h, 0:w]
    r = np.hypot(ys - cy, xs - cx) / radius
    region = np.clip((1.0 - r) / 0.3, 0, 1)
    sigma = max(1.0, radius * rng.uniform(0.15, 0.35))
    blurred = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))
    other = np.clip(blurred * rng.uniform(0.85, 1.15), 0, 255)
    return _blend(image, other, region)


def line(image: np.ndarray, rng: np.random.Generator) -> Augmented:
    """A thin curved line, 10-40 % of the shorter side long and 1-3 px wide at 256 px (scaled with the
    photo), dark or bright."""
    h, w = image.shape[:2]
    side = min(h, w)
    length = side * rng.uniform(0.10, 0.40)
    width = max(1.0, rng.uniform(1.0, 3.0) * side / 256)
    cy, cx = _centre(image, rng, int(length / 2))
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-1.0, 1.0) / max(length, 1.0)
    s = np.linspace(-length / 2, length / 2, max(8, int(length * 2)))
    theta = angle + bend * s
    py = cy + np.cumsum(np.sin(theta)) * (s[1] - s[0])
    px = cx + np.cumsum(np.cos(theta)) * (s[1] - s[0])
    py, px = py - (py.mean() - cy), px - (px.mean() - cx)
    canvas = np.zeros((h, w), bool)
    iy, ix = np.rint(py).astype(int), np.rint(px).astype(int)
    keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    canvas[iy[keep], ix[keep]] = True
    dist = ndimage.distance_transform_edt(~canvas)
    region = np.clip((width / 2 + 0.5 - dist) / 1.0, 0, 1)
    level = rng.uniform(0, 50) if rng.random() < 0.5 else rng.uniform(205, 255)
    other = np.full(image.shape, level, np.float32)
    return _blend(image, other, region * rng.uniform(0.5, 1.0))


FAMILIES: dict[str, Callable[[np.ndarray, np.random.Generator], Augmented]] = {
    "texture": texture,
    "spot": spot,
    "smudge": smudge,
    "line": line,
}


def make_defect(family: str, image: np.ndarray, rng: np.random.Generator) -> Augmented:
    """One defect of ``family`` (see ``FAMILIES``) on an HWC uint8 RGB image; retried a few times in
    the rare case that it changed no pixel (e.g. a faint blend that rounded away)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic defect family {family!r}; choose from {sorted(FAMILIES)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 RGB image, got {image.dtype} {image.shape}")
    result = FAMILIES[family](image, rng)
    for _ in range(5):
        if (result.image != image).any():
            break
        result = FAMILIES[family](image, rng)
    return result
