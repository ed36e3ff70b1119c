"""Property tests for adcore.augment: geometry, masks, determinism and parameter errors."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest

from adcore import augment
from adcore.augment import AUGMENTATIONS, apply, compose, get_augmentation
from adcore.registry import Param

NAMES = ["random_resized_crop", "color_jitter", "cutpaste", "cutpaste_scar"]
# (height, width): square small and large, landscape and portrait.
SIZES = [(64, 64), (256, 256), (200, 300), (300, 200)]


def noise(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Textured HWC uint8 RGB image, so almost any moved pixel differs from the one it covers."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def same(a: augment.Augmented, b: augment.Augmented) -> bool:
    masks_equal = (a.mask is None and b.mask is None) or (
        a.mask is not None and b.mask is not None and np.array_equal(a.mask, b.mask)
    )
    return np.array_equal(a.image, b.image) and masks_equal and a.outline == b.outline and a.box == b.box


# --- registry -----------------------------------------------------------------------------------


def test_exactly_the_documented_augmentations_are_registered():
    assert sorted(AUGMENTATIONS.names()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_entries_have_help_and_valid_typed_defaults(name):
    entry = get_augmentation(name)
    assert entry.name == name and entry.help.strip()
    for param in entry.params:
        assert isinstance(param, Param) and param.help.strip()
        assert param.validate(param.default) == param.default


# --- output format and purity -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", SIZES)
def test_output_is_hwc_uint8_rgb_of_the_input_size_and_input_is_untouched(name, size):
    image = noise(size)
    before = image.copy()
    for seed in range(5):
        out = apply(name, image, np.random.default_rng(seed))
        assert out.image.dtype == np.uint8
        assert out.image.shape == (*size, 3)
        assert out.image is not image
        if out.mask is not None:
            assert out.mask.dtype == bool and out.mask.shape == size
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("name", NAMES)
def test_global_augmentations_have_no_mask_and_local_ones_do(name):
    out = apply(name, noise((64, 64)), np.random.default_rng(0))
    local = name.startswith("cutpaste")
    assert (out.mask is not None) == local
    assert (out.outline is not None) == local


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(64, 64), (200, 300)])
def test_same_seed_same_output_different_seeds_different_output(name, size):
    image = noise(size)
    params = {"hue": 0.1} if name == "color_jitter" else {}
    for seed in range(5):
        a = apply(name, image, np.random.default_rng(seed), **params)
        b = apply(name, image, np.random.default_rng(seed), **params)
        assert same(a, b)
    outputs = [apply(name, image, np.random.default_rng(seed), **params).image.tobytes() for seed in range(10)]
    assert len(set(outputs)) >= 9


SPECS = [
    ("random_resized_crop", {"min_scale": 0.5}),
    ("color_jitter", {"hue": 0.05}),
    ("cutpaste", {}),
    ("cutpaste_scar", {"patch_jitter": 0.2}),
]


def test_compose_is_deterministic_and_seed_dependent():
    image = noise((200, 300))
    for seed in range(5):
        assert same(compose(SPECS, image, np.random.default_rng(seed)), compose(SPECS, image, np.random.default_rng(seed)))
    outputs = {compose(SPECS, image, np.random.default_rng(seed)).image.tobytes() for seed in range(10)}
    assert len(outputs) >= 9


def test_compose_equals_applying_the_steps_in_order_with_one_generator():
    image = noise((200, 300), seed=3)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        current = image
        for name, params in SPECS:
            current = apply(name, current, rng, **params).image
        np.testing.assert_array_equal(compose(SPECS, image, np.random.default_rng(seed)).image, current)


# --- colour jitter ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_color_jitter_with_all_zeros_is_the_identity(size):
    image = noise(size)
    zeros = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    for seed in range(3):
        np.testing.assert_array_equal(apply("color_jitter", image, np.random.default_rng(seed), **zeros).image, image)


def test_brightness_only_scales_the_image_within_the_allowed_factor():
    image = np.random.default_rng(0).integers(20, 200, (64, 64, 3), dtype=np.uint8)
    factors = []
    for seed in range(20):
        out = apply("color_jitter", image, np.random.default_rng(seed), brightness=0.2, contrast=0.0, saturation=0.0)
        factor = out.image.astype(float).sum() / image.astype(float).sum()
        assert 0.8 - 0.01 <= factor <= 1.2 + 0.01
        factors.append(factor)
    assert min(factors) < 0.95 and max(factors) > 1.05


def test_hue_only_keeps_each_pixels_brightest_and_darkest_channel_values():
    # An HSV hue turn keeps value (max channel) and saturation, hence also the min channel.
    image = noise((64, 64))
    out = apply("color_jitter", image, np.random.default_rng(1), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.4)
    assert not np.array_equal(out.image, image)
    np.testing.assert_allclose(out.image.max(-1), image.max(-1), atol=1)
    np.testing.assert_allclose(out.image.min(-1), image.min(-1), atol=1)


def test_hue_shift_matches_the_standard_hsv_conversion():
    # colorsys is the textbook RGB <-> HSV; torchvision's adjust_hue does the same turn.
    pixels = np.concatenate([noise((1, 200))[0], [[0, 0, 0], [255, 255, 255], [90, 90, 90], [255, 0, 0], [0, 40, 40]]])
    for shift in (-0.5, -0.2, 0.1, 0.45):
        ours = augment._shift_hue(pixels[None].astype(np.float32), shift)[0]
        for rgb, got in zip(pixels, ours):
            h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
            expected = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
            np.testing.assert_allclose(got, expected, atol=1e-3)


# --- random resized crop ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_crop_box_lies_in_the_image_with_area_and_shape_in_range(size):
    height, width = size
    ratios = []
    for seed in range(100):
        out = apply("random_resized_crop", noise(size), np.random.default_rng(seed))
        left, top, right, bottom = out.box
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        rounding = (0.5 * (w + h) + 0.25) / (width * height)  # w and h are rounded to whole pixels
        assert 0.6 - rounding <= w * h / (width * height) <= 1.0 + rounding
        assert 3 / 4 - 1.5 / h <= w / h <= 4 / 3 + 1.5 / h
        ratios.append(w / h)
    assert min(ratios) < 0.95 and max(ratios) > 1.05


def test_full_scale_crop_of_a_square_image_is_the_identity():
    image = noise((64, 64))
    out = apply("random_resized_crop", image, np.random.default_rng(0), min_scale=1.0, max_scale=1.0)
    assert out.box == (0.0, 0.0, 64.0, 64.0)
    np.testing.assert_array_equal(out.image, image)


def test_crop_magnifies_a_region_of_the_input():
    # A left half black / right half white image: a crop from the left half is all dark.
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 32:] = 255
    for seed in range(30):
        out = apply("random_resized_crop", image, np.random.default_rng(seed), min_scale=0.1, max_scale=0.1)
        left, _, right, _ = out.box
        if right <= 31:
            assert out.image.max() == 0
        if left >= 33:
            assert out.image.min() == 255


# --- CutPaste -----------------------------------------------------------------------------------


def rect_size(outline: list[tuple[float, float]]) -> tuple[float, float]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = outline
    # Axis-aligned rectangle, corners in order.
    assert y0 == y1 and x1 == x2 and y2 == y3 and x3 == x0
    return x1 - x0, y2 - y1


@pytest.mark.parametrize("size", SIZES)
def test_cutpaste_patch_area_and_aspect_ratio_stay_in_the_papers_ranges(size):
    height, width = size
    image = noise(size)
    aspects = []
    for seed in range(200):
        out = apply("cutpaste", image, np.random.default_rng(seed))
        w, h = rect_size(out.outline)
        assert 0.02 <= w * h / (width * height) <= 0.15
        assert 0.3 <= w / h <= 3.3
        xs, ys = [x for x, _ in out.outline], [y for _, y in out.outline]
        assert min(xs) >= 0 and max(xs) <= width and min(ys) >= 0 and max(ys) <= height
        aspects.append(w / h)
    aspects = np.array(aspects)
    # The branch [0.3, 1) or (1, 3.3] is chosen with probability 1/2.
    assert 0.3 < np.mean(aspects < 1) < 0.7 and 0.3 < np.mean(aspects > 1) < 0.7
    assert aspects.min() < 0.5 and aspects.max() > 2.0


def test_cutpaste_area_params_are_respected():
    image = noise((256, 256))
    for seed in range(50):
        out = apply("cutpaste", image, np.random.default_rng(seed), area_min=0.1, area_max=0.12)
        w, h = rect_size(out.outline)
        assert 0.1 <= w * h / 256**2 <= 0.12


@pytest.mark.parametrize("name", ["cutpaste", "cutpaste_scar"])
@pytest.mark.parametrize("size", SIZES)
def test_mask_is_exactly_the_changed_pixels(name, size):
    image = noise(size)
    nonempty = 0
    for seed in range(30):
        out = apply(name, image, np.random.default_rng(seed))
        changed = np.any(out.image != image, axis=-1)
        np.testing.assert_array_equal(out.mask, changed)
        np.testing.assert_array_equal(out.image[~out.mask], image[~out.mask])
        nonempty += bool(out.mask.any())
    assert nonempty >= 28


@pytest.mark.parametrize("size", SIZES)
def test_cutpaste_changes_almost_all_of_the_destination_rectangle_on_texture(size):
    image = noise(size)
    coverage = []
    for seed in range(30):
        out = apply("cutpaste", image, np.random.default_rng(seed))
        (x0, y0), _, (x2, y2), _ = out.outline
        inside = np.zeros(size, dtype=bool)
        inside[int(y0) : int(y2), int(x0) : int(x2)] = True
        assert not (out.mask & ~inside).any()
        coverage.append(out.mask.sum() / inside.sum())
    assert np.median(coverage) > 0.9


def test_cutpaste_without_jitter_pastes_an_exact_copy_of_another_part_of_the_image():
    image = noise((64, 64))
    windows_cache = {}
    for seed in range(20):
        out = apply("cutpaste", image, np.random.default_rng(seed), patch_jitter=0.0)
        (x0, y0), _, (x2, y2), _ = out.outline
        x0, y0, x2, y2 = int(x0), int(y0), int(x2), int(y2)
        pasted = out.image[y0:y2, x0:x2]
        shape = pasted.shape
        if shape not in windows_cache:
            windows_cache[shape] = np.lib.stride_tricks.sliding_window_view(image, shape)[:, :, 0]
        matches = np.all(windows_cache[shape] == pasted, axis=(-3, -2, -1))
        assert matches.any(), f"seed {seed}: the pasted patch is not a copy of any part of the input"


# --- CutPaste scar ------------------------------------------------------------------------------


def scar_geometry(outline: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Width, length and rotation (degrees) of the scar from its four corners."""
    c = np.array(outline)
    width_edge, length_edge = c[1] - c[0], c[2] - c[1]
    # A rectangle: opposite edges equal, adjacent edges perpendicular.
    np.testing.assert_allclose(c[3] - c[2], -width_edge, atol=1e-9)
    assert abs(width_edge @ length_edge) < 1e-6
    angle = math.degrees(math.atan2(width_edge[1], width_edge[0]))
    return float(np.linalg.norm(width_edge)), float(np.linalg.norm(length_edge)), angle


@pytest.mark.parametrize("size", SIZES + [(512, 512)])
def test_scar_size_scales_with_the_shorter_side_and_rotation_is_within_45_degrees(size):
    height, width = size
    scale = min(size) / 256
    w_low, w_high = max(1.0, 2 * scale), max(1.0, 16 * scale)
    l_low, l_high = max(1.0, 10 * scale), max(1.0, 25 * scale)
    image = noise(size)
    angles, widths = [], []
    for seed in range(100):
        out = apply("cutpaste_scar", image, np.random.default_rng(seed))
        w, length, angle = scar_geometry(out.outline)
        assert w_low - 1e-9 <= w <= w_high + 1e-9
        assert l_low - 1e-9 <= length <= l_high + 1e-9
        assert -45 - 1e-9 <= angle <= 45 + 1e-9
        xs, ys = [x for x, _ in out.outline], [y for _, y in out.outline]
        assert min(xs) >= 0 and max(xs) <= width and min(ys) >= 0 and max(ys) <= height
        angles.append(angle)
        widths.append(w)
    assert min(angles) < -30 and max(angles) > 30
    assert min(widths) < w_low + 0.3 * (w_high - w_low) and max(widths) > w_high - 0.3 * (w_high - w_low)


def test_scar_at_512_is_twice_the_size_at_256():
    # Same seed, same draws: every length scales by exactly 2.
    for seed in range(10):
        small = scar_geometry(apply("cutpaste_scar", noise((256, 256)), np.random.default_rng(seed)).outline)
        large = scar_geometry(apply("cutpaste_scar", noise((512, 512)), np.random.default_rng(seed)).outline)
        assert large[0] == pytest.approx(2 * small[0]) and large[1] == pytest.approx(2 * small[1])
        assert large[2] == pytest.approx(small[2])


@pytest.mark.parametrize("size", [(256, 256), (200, 300)])
def test_scar_mask_lies_inside_the_rotated_rectangle_and_nearly_fills_it(size):
    image = noise(size)
    for seed in range(30):
        out = apply("cutpaste_scar", image, np.random.default_rng(seed))
        c = np.array(out.outline)
        w, length, _ = scar_geometry(out.outline)
        centre = c.mean(axis=0)
        across, along = (c[1] - c[0]) / w, (c[2] - c[1]) / length
        ys, xs = np.nonzero(out.mask)
        offsets = np.stack([xs + 0.5, ys + 0.5], axis=1) - centre
        assert np.all(np.abs(offsets @ across) <= w / 2 + 1e-6)
        assert np.all(np.abs(offsets @ along) <= length / 2 + 1e-6)
        # Pixel centres inside a w x l rectangle: about w * l of them, minus the rare unchanged one.
        assert out.mask.sum() >= 0.6 * w * length - 2 * (w + length)


# --- compose ------------------------------------------------------------------------------------


def test_compose_carries_an_earlier_mask_and_outline_through_a_crop():
    image = noise((200, 300))
    specs = [("cutpaste", {"area_min": 0.1, "area_max": 0.15}), ("random_resized_crop", {"min_scale": 0.6})]
    for seed in range(20):
        out = compose(specs, image, np.random.default_rng(seed))
        assert out.mask.shape == (200, 300)
        # The output pixels whose centres fall inside the mapped patch outline: exactly those
        # sample (nearest) a pasted source pixel, so the mask must lie within them and, on
        # texture, nearly fill them.
        (x0, y0), _, (x2, y2), _ = out.outline
        rows = (np.arange(200) + 0.5 >= y0) & (np.arange(200) + 0.5 < y2)
        cols = (np.arange(300) + 0.5 >= x0) & (np.arange(300) + 0.5 < x2)
        region = rows[:, None] & cols[None, :]
        assert not (out.mask & ~region).any()
        if region.sum() > 0:
            assert out.mask[region].mean() > 0.9


def test_compose_mask_is_the_union_of_the_local_masks_and_ignores_jitter():
    image = noise((64, 64))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        first = apply("cutpaste", image, rng)
        jittered = apply("color_jitter", first.image, rng)
        second = apply("cutpaste_scar", jittered.image, rng)
        out = compose([("cutpaste", {}), ("color_jitter", {}), ("cutpaste_scar", {})], image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out.mask, first.mask | second.mask)
        assert out.outline == second.outline


def test_compose_of_crops_reports_the_region_of_the_original_in_view():
    image = noise((64, 64))
    specs = [("random_resized_crop", {"min_scale": 1.0, "max_scale": 1.0}), ("random_resized_crop", {})]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        apply("random_resized_crop", image, rng, min_scale=1.0, max_scale=1.0)
        second = apply("random_resized_crop", image, rng)
        assert compose(specs, image, np.random.default_rng(seed)).box == pytest.approx(second.box)


def test_compose_of_nothing_is_a_copy():
    image = noise((64, 64))
    out = compose([], image, np.random.default_rng(0))
    np.testing.assert_array_equal(out.image, image)
    assert out.image is not image and out.mask is None and out.outline is None


# --- errors -------------------------------------------------------------------------------------


def test_unknown_augmentation_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown augmentation 'blur'; known: .*cutpaste"):
        apply("blur", noise((64, 64)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown augmentation"):
        compose([("cutpaste", {}), ("blur", {})], noise((64, 64)), np.random.default_rng(0))


def test_unknown_parameter_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'cutpaste'.*unknown parameter\(s\) \['area'\]; known: .*area_max"):
        apply("cutpaste", noise((64, 64)), np.random.default_rng(0), area=0.1)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("cutpaste", {"area_max": 0.9}, "area_max: 0.9 is above the maximum"),
        ("cutpaste", {"patch_jitter": -0.1}, "patch_jitter: -0.1 is below the minimum"),
        ("color_jitter", {"hue": 0.7}, "hue: 0.7 is above the maximum"),
        ("color_jitter", {"brightness": "a lot"}, "brightness: expected float"),
        ("random_resized_crop", {"min_scale": 0.0}, "min_scale: 0.0 is below the minimum"),
        ("random_resized_crop", {"min_scale": 0.9, "max_scale": 0.5}, "min_scale 0.9 is above max_scale 0.5"),
        ("random_resized_crop", {"min_ratio": 2.0, "max_ratio": 1.0}, "min_ratio 2.0 is above max_ratio 1.0"),
        ("cutpaste", {"area_min": 0.2, "area_max": 0.1}, "area_min 0.2 is above area_max 0.1"),
    ],
)
def test_bad_parameter_values_raise_a_clear_error(name, params, message):
    with pytest.raises(ValueError, match=message):
        apply(name, noise((64, 64)), np.random.default_rng(0), **params)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), dtype=np.uint8),
        np.zeros((64, 64, 4), dtype=np.uint8),
        np.zeros((64, 64, 3), dtype=np.float32),
        np.zeros((3, 64, 64), dtype=np.uint8),
    ],
)
def test_images_that_are_not_hwc_uint8_rgb_are_rejected(image):
    with pytest.raises(ValueError, match="HWC uint8 RGB"):
        apply("cutpaste", image, np.random.default_rng(0))


def test_patch_that_cannot_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fit a patch"):
        apply("cutpaste", noise((4, 400)), np.random.default_rng(0), area_min=0.3, area_max=0.4)
