"""Overlapping tiles of large photos, and anomaly maps stitched back from the tiles' maps.

An industrial camera's 5-20 MP photo squashed to a network's ~224 px loses a 1 mm scratch
entirely. Cutting the photo into overlapping tiles of ``tile`` x ``tile`` native pixels, each seen
at the network's working size, keeps small defects visible; the tiles' maps are put back where the
tiles came from, averaged where tiles overlap (weighted towards each tile's centre, so the edges of
tiles, where a network sees least context, count least).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive), native pixels


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start positions along one side: evenly spread, overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(height: int, width: int, tile: int, overlap: float = 0.25) -> list[Box]:
    """Boxes of ``tile`` x ``tile`` pixels covering a ``height`` x ``width`` photo, overlapping by at least
    ``overlap`` of a tile; a side shorter than ``tile`` is one tile of that side's length."""
    if tile < 1:
        raise ValueError(f"tile size must be at least 1 pixel, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    th, tw = min(tile, height), min(tile, width)
    return [
        (top, left, top + th, left + tw)
        for top in _starts(height, tile, overlap)
        for left in _starts(width, tile, overlap)
    ]


def cut_tiles(image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
    """The HWC pixels of each box (copies, so the photo itself may be freed)."""
    return [np.ascontiguousarray(image[t:b, l:r]) for t, l, b, r in boxes]


def _centre_weight(h: int, w: int) -> np.ndarray:
    """A tent that is 1 in a tile's middle and falls towards its edges (never to 0)."""
    wy = 1.0 - np.abs(np.linspace(-1, 1, h)) * 0.9
    wx = 1.0 - np.abs(np.linspace(-1, 1, w)) * 0.9
    return np.outer(wy, wx).astype(np.float32)


def stitch(maps: Sequence[np.ndarray], boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Tile maps (each the size of its box) -> one (H, W) float32 map, weighted mean where tiles overlap."""
    total = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    for amap, (t, l, b, r) in zip(maps, boxes):
        if amap.shape != (b - t, r - l):
            raise ValueError(f"a tile map of shape {amap.shape} does not fit its box {(t, l, b, r)}")
        wgt = _centre_weight(b - t, r - l)
        total[t:b, l:r] += amap * wgt
        weight[t:b, l:r] += wgt
    if (weight == 0).any():
        raise ValueError("the tiles do not cover the whole photo")
    return total / weight
