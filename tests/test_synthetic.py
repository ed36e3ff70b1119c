"""Synthetic validation defects: each family changes only the pixels of its mask, draws all its
randomness from the generator, and lands on the part rather than on an empty background."""

from __future__ import annotations

import numpy as np
import pytest

from adcore.synthetic import FAMILIES, make_defect, perlin_noise
from tests.helpers import textured


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shape", [(64, 64), (40, 90), (256, 200)])
def test_changes_only_the_pixels_of_its_mask(family, shape):
    rng = np.random.default_rng(3)
    base = textured(rng, max(shape))[: shape[0], : shape[1]].copy()
    for _ in range(10):
        out = make_defect(family, base, rng)
        assert out.image.shape == base.shape and out.image.dtype == np.uint8
        assert out.mask.shape == shape and out.mask.dtype == bool
        changed = (out.image != base).any(-1)
        assert changed.any(), "the defect changed nothing"
        assert not (changed & ~out.mask).any(), "a pixel outside the mask changed"
        assert out.mask.mean() < 0.5, "a 'small' defect covered most of the photo"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_seed_same_defect(family):
    base = textured(np.random.default_rng(0), 64)
    a = make_defect(family, base, np.random.default_rng(11))
    b = make_defect(family, base, np.random.default_rng(11))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_defects_land_on_the_part_not_the_plain_background(family):
    # A textured part in the middle of a flat dark background, as photos of objects often are.
    rng = np.random.default_rng(5)
    image = np.full((128, 128, 3), 20, np.uint8)
    image[32:96, 32:96] = textured(rng, 64)
    part = np.zeros((128, 128), bool)
    part[28:100, 28:100] = True  # the part and a few pixels around it
    on_part = [make_defect(family, image, rng).mask for _ in range(30)]
    share = np.mean([(m & part).sum() / m.sum() for m in on_part])
    # The part is 32 % of the photo: uniform placement would put about a third of the defect there.
    assert share > 0.7, f"only {share:.0%} of {family} defect pixels landed on the part"


def test_unknown_family_and_bad_image_are_refused():
    with pytest.raises(ValueError, match="unknown synthetic defect family"):
        make_defect("rust", textured(np.random.default_rng(0), 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="HWC uint8 RGB"):
        make_defect("spot", np.zeros((32, 32), np.uint8), np.random.default_rng(0))


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise((64, 96), 16, np.random.default_rng(0))
    assert noise.shape == (64, 96)
    assert np.abs(noise).max() <= 1.5
    # neighbouring pixels differ far less than the overall spread: it is noise at the lattice scale
    assert np.abs(np.diff(noise, axis=1)).mean() < 0.1 * noise.std() * 16
