"""PatchCore + defect segmenter: training on pasted defects, the calibrated average of the two maps,
save/load, and the checks on its augmentations."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcore.augment import apply
from adcore.methods import FitContext, build_method
from adcore.methods.base import gaussian_blur
from tests.helpers import textured, textured_set

TINY = {"image_size": 128, "layers": "8+16", "coreset_ratio": 0.25, "map_sigma": 2.0, "batch_size": 4, "epochs": 4}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def normal_images():
    return textured_set(20)


@pytest.fixture(scope="module")
def fitted(normal_images):
    events = []
    ctx = FitContext(device=CPU, on_progress=events.append)
    method = build_method("patchcore_segmenter", **TINY).fit(normal_images, ctx)
    return method, events


def _with_square(rng, top=30, left=14, side=10):
    image = textured(rng, 64)
    image[top : top + side, left : left + side] = 250
    return image


def test_it_trains_the_segmenter_after_the_memory_and_its_map_points_at_the_defect(fitted):
    method, events = fitted
    phases = list(dict.fromkeys(e["phase"] for e in events))
    assert phases == ["extracting features", "selecting coreset", "training"]
    losses = [e["loss"] for e in events if e["loss"] is not None]
    assert losses and all(np.isfinite(losses))
    # 2 of the 20 photos are kept out to calibrate: the memory holds patches of the other 18 only.
    assert len(method.model_.bank) == round(18 * 16 * 16 * 0.25)

    rng = np.random.default_rng(5)
    defect, clean, wide = _with_square(rng), textured(rng, 64), textured(rng, 80)[:48]
    pred = method.predict([defect, clean, wide])
    assert [m.shape for m in pred.anomaly_maps] == [(64, 64), (64, 64), (48, 80)]
    y, x = np.unravel_index(pred.anomaly_maps[0].argmax(), (64, 64))
    assert 30 - 3 <= y < 40 + 3 and 14 - 3 <= x < 24 + 3, f"map peak at {(y, x)}, square at rows 30-39, cols 14-23"
    assert pred.scores[0] > pred.scores[1]


def test_the_segmenter_alone_learned_to_find_pasted_defects(fitted):
    method, _ = fitted
    rng = np.random.default_rng(11)
    clean = [textured(rng, 64) for _ in range(6)]
    pasted = [apply("cutpaste", textured(rng, 64), rng, area_min=0.05, area_max=0.1).image for _ in range(6)]
    config = method.config_
    method.config_ = {**config, "segmenter_weight": 1.0}
    try:
        scores = method.score(clean + pasted)
    finally:
        method.config_ = config
    assert scores[6:].mean() > scores[:6].mean()
    assert np.mean(scores[6:, None] > scores[None, :6]) >= 0.75  # image AUROC of the segmenter's map


def test_the_final_map_is_the_weighted_mean_of_the_two_calibrated_maps(fitted):
    method, _ = fitted
    images = [_with_square(np.random.default_rng(3)), textured(np.random.default_rng(4), 64)]
    c = method.model_.calibration
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
        emb = method._embed(x)
        memory = method._distances(emb)
        segmenter = method.segmenter_(method.model_.standardised(emb))
        expected = 0.5 * (memory - c[0]) / c[1] + 0.5 * (segmenter - c[2]) / c[3]
        expected = F.interpolate(expected, size=(128, 128), mode="bilinear", align_corners=False)
        expected = gaussian_blur(expected[:, 0], 2.0)
        got = method._predict_batch(x)["maps"]
    torch.testing.assert_close(got, expected)
    # Both parts carry weight: neither calibration scale is degenerate.
    assert float(c[1]) > 0 and float(c[3]) > 0


def test_calibration_puts_held_out_normal_photos_at_mean_0_and_spread_1(normal_images, monkeypatch):
    method = build_method("patchcore_segmenter", **{**TINY, "epochs": 1})
    kept_out, trained_on = [], []
    cls = type(method)
    calibrate, train = cls._calibrate_segmenter, cls._train_segmenter
    monkeypatch.setattr(
        cls, "_calibrate_segmenter", lambda self: (kept_out.extend(self.calibration_images_), calibrate(self))
    )
    monkeypatch.setattr(
        cls, "_train_segmenter", lambda self, images, ctx: (trained_on.extend(images), train(self, images, ctx))
    )
    method.fit(normal_images, FitContext(device=CPU))
    held = kept_out[:2]
    assert len(kept_out) == 2 and len(trained_on) == 18
    assert {id(i) for i in held} | {id(i) for i in trained_on} == {id(i) for i in normal_images}
    with torch.inference_mode():
        (_, x), = method._shaped_batches(held, 16)  # resized the way the method sees photos
        emb = method._embed(x)
        c = method.model_.calibration
        memory = (method._distances(emb) - c[0]) / c[1]
        segmenter = (method.segmenter_(method.model_.standardised(emb)) - c[2]) / c[3]
    for z in (memory, segmenter):
        assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(z.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_it_needs_a_pasting_augmentation(normal_images):
    with pytest.raises(ValueError, match=r"augmentations need cutpaste or cutpaste_scar; got \['color_jitter'\]"):
        build_method("patchcore_segmenter", **TINY).fit(
            normal_images, FitContext(device=CPU, augmentations=[("color_jitter", {})])
        )
    # A chain with crop and a scar is fine: the scar's mask follows the crop.
    method = build_method("patchcore_segmenter", **{**TINY, "epochs": 1}).fit(
        normal_images[:6], FitContext(device=CPU, augmentations=[("random_resized_crop", {}), ("cutpaste_scar", {})])
    )
    assert np.isfinite(method.score(normal_images[:2])).all()


