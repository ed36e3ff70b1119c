"""Tiles of large photos: boxes that cover the photo, maps stitched back, and a small defect on a
large photo that PatchCore finds with tiles and misses when the whole photo is shrunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.methods import FitContext, build_method
from adcore.tiling import cut_tiles, stitch, tile_boxes

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape,tile", [((100, 100), 40), ((90, 250), 64), ((30, 500), 64), ((64, 64), 64)])
def test_tiles_cover_the_photo_and_overlap(shape, tile):
    boxes = tile_boxes(*shape, tile, overlap=0.25)
    cover = np.zeros(shape, int)
    for t, l, b, r in boxes:
        assert 0 <= t < b <= shape[0] and 0 <= l < r <= shape[1]
        assert b - t == min(tile, shape[0]) and r - l == min(tile, shape[1])
        cover[t:b, l:r] += 1
    assert cover.min() >= 1
    if shape[1] > tile:
        lefts = sorted({box[1] for box in boxes})
        assert max(np.diff(lefts)) <= tile * 0.75 + 1  # neighbours overlap by at least a quarter


def test_stitching_puts_each_tile_back_where_it_came_from():
    rng = np.random.default_rng(0)
    full = rng.random((90, 130)).astype(np.float32)
    boxes = tile_boxes(90, 130, 48)
    tiles = [t[..., 0] for t in cut_tiles(full[..., None], boxes)]
    assert np.allclose(stitch(tiles, boxes, (90, 130)), full, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        stitch([tiles[0][:10]], boxes[:1], (90, 130))


def _fine_grain(rng, shape):
    """A photo whose texture is fine noise: shrunk, it becomes a flat grey."""
    return rng.integers(60, 196, (*shape, 1)).repeat(3, -1).astype(np.uint8)


def test_a_small_defect_on_a_large_photo_is_found_with_tiles_and_missed_without():
    rng = np.random.default_rng(0)
    train = [_fine_grain(rng, (512, 512)) for _ in range(4)]
    clean = [_fine_grain(rng, (512, 512)) for _ in range(3)]
    defect = _fine_grain(rng, (512, 512))
    mask = np.zeros((512, 512), bool)
    mask[300:316, 180:196] = True
    # The defect keeps the surface's mean brightness but loses its grain (a polished spot): a
    # shrunk photo, where the grain averages out, cannot show it.
    defect[mask] = 128
    common = {"image_size": 64, "layers": "8+16", "neighbourhood": 3, "coreset_ratio": 0.1, "batch_size": 16,
              "normalize": "none", "map_sigma": 1.0}
    results = {}
    for tile in (0, 64):
        method = build_method("patchcore", **common, tile_size=tile).fit(train, FitContext(device=CPU))
        pred = method.predict(clean + [defect])
        amap = pred.anomaly_maps[-1]
        assert amap.shape == (512, 512)
        peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
        results[tile] = {
            "peak_on_defect": bool(296 <= peak[0] < 320 and 176 <= peak[1] < 200),  # the defect, 4 px around
            "ranked_above_clean": bool(pred.scores[-1] > pred.scores[:-1].max()),
        }
    assert results[64] == {"peak_on_defect": True, "ranked_above_clean": True}, results
    assert results[0]["peak_on_defect"] is False, results
