"""Pretrained backbones, the PatchCore and pretrained-Gaussian methods, and the greedy coreset."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from adcore.backbones import load_backbone, resnet18_weights_path
from adcore.methods import FitContext, build_method, build_saved_method
from adcore.methods.base import aspect_shape
from adcore.methods.patchcore import greedy_coreset, knn_distance, patch_embedding
from tests.helpers import textured

# 64 px photos seen at 128 px: at 64 px the stride-16 grid is only 4x4 and peaks drift to the borders.
TINY = {"image_size": 128, "layers": "8+16", "coreset_ratio": 0.25, "map_sigma": 2.0, "batch_size": 4}



@pytest.fixture(scope="module")
def normal_images():
    rng = np.random.default_rng(0)
    return [textured(rng, 64) for _ in range(12)]


def _with_square(rng, top=30, left=14, side=10):
    """A 64 px normal-looking texture with a pasted bright square: the synthetic defect."""
    image = textured(rng, 64)
    image[top : top + side, left : left + side] = 250
    return image


# -- backbones -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,side", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite_backbones_load_the_imagenet_weights_strictly_and_recognise_sample_photos(name, side):
    from sklearn.datasets import load_sample_images

    net = load_backbone(name)  # load_state_dict(strict=True) inside
    photos = load_sample_images().images  # china.jpg (a palace), flower.jpg (a daisy-like flower)
    x = torch.stack([
        torch.from_numpy(np.asarray(Image.fromarray(p[:, 107:534]).resize((side, side), Image.BICUBIC)).copy())
        for p in photos
    ]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        probs = net.logits(x).softmax(1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] == 698  # ImageNet class 698: palace, first for every variant
    if name != "efficientnet_lite2":  # Lite2 calls the flower close-up a honeycomb (599)
        assert 985 in top5[1]  # ImageNet class 985: daisy
    entropy = -(probs[0] * probs[0].clamp_min(1e-12).log()).sum()
    assert entropy < 0.7 * np.log(1000)  # confident about the palace, far from uniform


def test_backbone_feature_maps_have_the_stated_strides_and_channels():
    net = load_backbone("efficientnet_lite0")
    with torch.inference_mode():
        out = net(torch.rand(2, 3, 96, 128), [8, 16, 32])
    for stride, fmap in out.items():
        assert fmap.shape == (2, net.channels[stride], 96 // stride, 128 // stride)
    with pytest.raises(ValueError, match="strides"):
        net(torch.rand(1, 3, 64, 64), [3])


def test_unknown_backbone_and_resnet18_offline_fallback(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'; known: efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18"):
        load_backbone("vgg")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert not resnet18_weights_path().exists()
    with pytest.warns(UserWarning, match="ResNet-18 ImageNet weights not found .* using efficientnet_lite0"):
        net = load_backbone("resnet18")
    assert net.name == "efficientnet_lite0"
    assert load_backbone("resnet18", pretrained=False).name == "resnet18"


# -- coreset and distances -------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [65536, 300])  # one group, and several
def test_coreset_keeps_the_requested_count_and_covers_both_clusters(group_size):
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(1000, 16, generator=gen)
    small = torch.randn(20, 16, generator=gen) * 0.1 + 12.0  # a rare pattern far away
    points = torch.cat([big, small])

    picks = greedy_coreset(points, 25, group_size=group_size, projection_dim=8)

    assert len(picks) == 25 and len(set(picks.tolist())) == 25
    assert (picks >= 1000).any() and (picks < 1000).any()
    # Spread out: the picks from the big cluster are farther apart than random points are.
    chosen = points[picks[picks < 1000]]
    random = big[torch.randperm(1000, generator=gen)[: len(chosen)]]
    assert torch.pdist(chosen).min() > torch.pdist(random).min()


def test_coreset_stops_when_asked(monkeypatch):
    import adcore.methods.patchcore as pc

    monkeypatch.setattr(pc, "REPORT_EVERY_S", 0.0)
    points = torch.randn(5000, 8)
    picks = greedy_coreset(points, 4000, on_step=lambda i: True)
    assert 1 <= len(picks) < 4000


def test_knn_distance_matches_brute_force_in_chunks(monkeypatch):
    import adcore.methods.patchcore as pc

    monkeypatch.setattr(pc, "DISTANCE_CHUNK", 64)  # many small chunks
    q, bank = torch.randn(37, 5), torch.randn(23, 5)
    full = torch.cdist(q, bank)
    torch.testing.assert_close(knn_distance(q, bank, 1), full.min(1).values)
    torch.testing.assert_close(knn_distance(q, bank, 3), full.sort(1).values[:, :3].mean(1))


# -- PatchCore -------------------------------------------------------------------------------------

def test_patchcore_fits_quickly_and_its_map_points_at_the_defect(normal_images):
    events = []
    method = build_method("patchcore", **TINY)
    method.fit(normal_images, FitContext(device=torch.device("cpu"), on_progress=events.append))

    assert {e["phase"] for e in events} == {"extracting features", "selecting coreset"}
    assert all(e["loss"] is None for e in events)
    assert len(method.model_.bank) == round(12 * 16 * 16 * 0.25)  # 16x16 patches per image at stride 8

    rng = np.random.default_rng(5)
    defect, clean, wide = _with_square(rng), textured(rng, 64), textured(rng, 80)[:48]
    pred = method.predict([defect, clean, wide])
    assert [m.shape for m in pred.anomaly_maps] == [(64, 64), (64, 64), (48, 80)]  # each photo's own size
    y, x = np.unravel_index(pred.anomaly_maps[0].argmax(), (64, 64))
    assert 30 - 3 <= y < 40 + 3 and 14 - 3 <= x < 24 + 3, f"map peak at {(y, x)}, square at rows 30-39, cols 14-23"
    assert pred.scores[0] > pred.scores[1]
    assert pred.embeddings.shape == (3, 40 + 112)


def test_patchcore_save_load_gives_identical_scores(normal_images, tmp_path):
    params = {**TINY, "projection_dim": 32, "neighbours": 3}
    method = build_method("patchcore", **params).fit(normal_images, FitContext(device=torch.device("cpu")))
    save_file(method.state_dict(), str(tmp_path / "state.safetensors"))

    loaded = build_method("patchcore", **params).load_state_dict(
        load_file(str(tmp_path / "state.safetensors")), device=torch.device("cpu")
    )

    images = [_with_square(np.random.default_rng(1)), normal_images[0], textured(np.random.default_rng(2), 80)[:48]]
    a, b = method.predict(images), loaded.predict(images)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.anomaly_maps[0], b.anomaly_maps[0])


def test_patch_embedding_averages_each_level_over_its_neighbourhood():
    gen = torch.Generator().manual_seed(0)
    fine, coarse = torch.rand(1, 2, 6, 6, generator=gen), torch.rand(1, 3, 3, 3, generator=gen)
    features = {8: fine, 16: coarse}
    assert torch.equal(patch_embedding(features, None, 1)[:, :2], fine)  # 1: each position alone
    out = patch_embedding(features, None, 5)
    assert out.shape == (1, 5, 6, 6)
    torch.testing.assert_close(out[0, :2, 3, 3], fine[0, :, 1:6, 1:6].mean((1, 2)))  # the full 5x5 window
    torch.testing.assert_close(out[0, :2, 0, 0], fine[0, :, 0:3, 0:3].mean((1, 2)))  # corner: only what is inside
    # The coarse level is averaged at its own resolution (3x3 whole at its centre), then upsampled.
    torch.testing.assert_close(patch_embedding({16: coarse}, None, 5)[0, :, 1, 1], coarse[0].mean((1, 2)))


def test_a_model_saved_before_a_parameter_existed_loads_with_the_value_it_was_fitted_with(normal_images):
    fitted = build_method("patchcore", **TINY, neighbourhood=3, keep_aspect=False).fit(
        normal_images, FitContext(device=torch.device("cpu"))
    )
    new = ("neighbourhood", "keep_aspect")
    saved_params = {k: v for k, v in fitted.config_.items() if k not in new}  # as saved before the parameters

    old = build_saved_method("patchcore", saved_params).load_state_dict(fitted.state_dict(), device=torch.device("cpu"))
    assert [old.config_[k] for k in new] == [3, False]
    assert [build_method("patchcore").get_params()[k] for k in new] == [5, True]  # today's defaults differ
    images = [_with_square(np.random.default_rng(1)), normal_images[0], textured(np.random.default_rng(2), 80)[:40]]
    np.testing.assert_array_equal(old.predict(images).scores, fitted.predict(images).scores)
    # A model saved with the parameter keeps its own value.
    assert build_saved_method("patchcore", {**saved_params, "neighbourhood": 7}).get_params()["neighbourhood"] == 7


@pytest.mark.parametrize(
    "photo, size, shape",
    [((100, 300), 224, (128, 384)), ((64, 64), 128, (128, 128)), ((300, 100), 224, (384, 128)), ((10, 1000), 64, (32, 640))],
)
def test_aspect_shape_keeps_the_ratio_and_about_the_area_in_multiples_of_32(photo, size, shape):
    assert aspect_shape(*photo, size) == shape


def test_keep_aspect_feeds_each_photo_at_its_own_ratio_and_returns_results_in_input_order(normal_images, monkeypatch):
    method = build_method("patchcore", **TINY).fit(normal_images, FitContext(device=torch.device("cpu")))
    rng = np.random.default_rng(3)
    wide, square, tall = textured(rng, 96)[:32], _with_square(rng), textured(rng, 96)[:, :40]
    images = [wide, square, tall, wide[:, ::-1].copy()]
    shapes = []
    predict_batch = type(method)._predict_batch
    monkeypatch.setattr(type(method), "_predict_batch", lambda self, x: shapes.append(tuple(x.shape)) or predict_batch(self, x))
    together = method.predict(images, batch_size=8)
    # Photos of the same shape share a batch; each goes in at its own width:height ratio.
    assert sorted(shapes) == sorted([(2, 3, 64, 224), (1, 3, 128, 128), (1, 3, 192, 96)])
    # Batches come in the order of their first photo, so shapes interleave (a budget-cut fit sees each).
    assert [idx for idx, _ in method._shaped_batches(images, 1)] == [[0], [1], [2], [3]]
    assert [idx for idx, _ in method._shaped_batches(images, 2)] == [[0, 3], [1], [2]]
    alone = [method.predict([image]) for image in images]
    np.testing.assert_allclose(together.scores, [a.scores[0] for a in alone], rtol=1e-5)
    for joint, single, image in zip(together.anomaly_maps, alone, images):
        assert joint.shape == image.shape[:2]
        np.testing.assert_allclose(joint, single.anomaly_maps[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(together.embeddings, np.concatenate([a.embeddings for a in alone]), rtol=1e-4, atol=1e-5)


def test_patchcore_refuses_a_state_from_another_backbone(normal_images):
    method = build_method("patchcore", **TINY).fit(normal_images, FitContext(device=torch.device("cpu")))
    state = method.state_dict()
    state["backbone.resnet18"] = state.pop("backbone.efficientnet_lite0")
    with pytest.raises(ValueError, match=r"fitted on \['resnet18'\] backbone features but efficientnet_lite0"):
        build_method("patchcore", **TINY).load_state_dict(state, device=torch.device("cpu"))


def test_a_spent_budget_keeps_the_patches_of_the_first_batch(normal_images):
    method = build_method("patchcore", **TINY).fit(normal_images, FitContext(budget_s=0.0))
    assert len(method.model_.bank) == round(4 * 16 * 16 * 0.25)  # one batch of 4 images seen, then stopped
    assert np.isfinite(method.score(normal_images[:2])).all()


def test_patchcore_params_are_checked():
    with pytest.raises(ValueError, match=r"layers: '2\+4' is not one of"):
        build_method("patchcore", layers="2+4")
    with pytest.raises(ValueError, match=r"backbone: 'vgg' is not one of"):
        build_method("patchcore", backbone="vgg")
    assert build_method("patchcore").get_params()["image_size"] == 224  # not the common default of 128


# -- pretrained Gaussian ---------------------------------------------------------------------------

def test_pretrained_gaussian_scores_a_defect_higher_and_round_trips(normal_images):
    params = {"image_size": 96, "batch_size": 4}
    method = build_method("pretrained_gaussian", **params).fit(normal_images, FitContext(device=torch.device("cpu")))
    rng = np.random.default_rng(7)
    images = [textured(rng, 64) for _ in range(4)] + [_with_square(rng, 20, 20, 24)]
    pred = method.predict(images)
    assert pred.anomaly_maps is None and pred.embeddings.shape == (5, 40 + 112 + 320)
    assert pred.scores[-1] > pred.scores[:-1].max()

    loaded = build_method("pretrained_gaussian", **params).load_state_dict(
        method.state_dict(), device=torch.device("cpu")
    )
    np.testing.assert_array_equal(loaded.score(images), pred.scores)

    # Its score is the project's gaussian scorer on its own embeddings.
    from adcore.scoring import build_scorer

    train = method.predict(normal_images).embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = build_scorer("gaussian").fit(train.astype(np.float64)).score(pred.embeddings)
    np.testing.assert_allclose(pred.scores, expected, rtol=2e-3)


@pytest.mark.parametrize("group_size", [65536, 300])
def test_every_prefix_of_a_coreset_is_the_smaller_coreset(group_size):
    points = torch.randn(1200, 16, generator=torch.Generator().manual_seed(0))
    big = greedy_coreset(points, 120, projection_dim=0, group_size=group_size)
    assert len(big) == 120 and len(set(big.tolist())) == 120
    small = greedy_coreset(points, 12, projection_dim=0, group_size=group_size)
    if group_size > len(points):  # one group: greedy picks are nested, the first 12 are the 12-point coreset
        assert big[:12].tolist() == small.tolist()
    else:  # four groups: a prefix takes each group's first picks in proportion, as the small coreset does
        assert sorted(big[:12].tolist()) == sorted(small.tolist())
