"""The self-supervised methods (contrastive, CutPaste) and their shared encoder, on tiny images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adcore.encoders import ResNetEncoder, assemble_map, build_encoder, extract_patches, patch_grid, warmup_cosine
from adcore.methods import FitContext, build_method
from tests.helpers import textured

CPU = torch.device("cpu")
ENCODER = {"image_size": 48, "width": 8, "blocks": "1,1,1,1", "batch_size": 8, "learning_rate": 3e-3}
CUTPASTE = {**ENCODER, "epochs": 6, "patch_size": 16, "patch_stride": 8, "map_sigma": 2.0}
# The test textures have little contrast, which per-image exposure normalisation stretches into
# noise; a whole-image embedding then barely moves for a half-image defect after a dozen steps.
CONTRASTIVE = {**ENCODER, "epochs": 6, "queue_size": 32, "normalize": "none"}


@pytest.fixture(scope="module")
def normal_images():
    rng = np.random.default_rng(0)
    return [textured(rng, 48) for _ in range(16)]


def _with_square(rng, size=48, top=20, left=10, side=12):
    image = textured(rng, size)
    image[top : top + side, left : left + side] = 250
    return image


def _with_stripes(rng, size=48):
    """Half the photo replaced by sharp black-and-white stripes: unlike any normal texture."""
    image = textured(rng, size)
    image[:, size // 2 :] = np.where((np.arange(size // 2) // 2) % 2, 0, 255)[None, :, None]
    return image


# -- encoder and patches ---------------------------------------------------------------------------

def test_resnet_encoder_shapes_and_resnet18_layout():
    net = ResNetEncoder(16, [1, 1, 1, 1])
    out = net(torch.rand(2, 3, 64, 64))
    assert out.embedding.shape == (2, 128) and out.dense.shape == (2, 32 + 64, 8, 8)
    resnet18 = ResNetEncoder()  # the default is ResNet-18: the same parameter names and shapes as torchvision's
    from torchvision.models import resnet18 as tv_resnet18

    theirs = {k: v.shape for k, v in tv_resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in resnet18.state_dict().items()} == theirs


def test_pretrained_resnet_falls_back_to_lite0_offline_and_checks_its_layout(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    config = {"encoder": "resnet", "width": 64, "blocks": "2,2,2,2", "pretrained": True}
    with pytest.warns(UserWarning, match="ResNet-18 ImageNet weights not found .* efficientnet_lite0"):
        net, built = build_encoder(config)
    assert built == "efficientnet_lite0" and net.embedding_dim == 320
    with pytest.raises(ValueError, match="only for ResNet-18"):
        build_encoder({**config, "width": 16})
    with pytest.raises(ValueError, match="blocks: expected four"):
        build_encoder({**config, "blocks": "2,2"})


def test_patches_cover_the_image_and_reassemble():
    x = torch.arange(2 * 20 * 20, dtype=torch.float32).view(2, 1, 20, 20)
    patches = extract_patches(x, 8, 5)
    n = patch_grid(20, 8, 5)
    assert n == 4 and patches.shape == (2 * n * n, 1, 8, 8)
    assert torch.equal(patches[n * n + n + 1], x[1, :, 5:13, 5:13])  # image 1, row 1, column 1
    assert torch.equal(patches[n - 1], x[0, :, 0:8, 12:20])  # the last column touches the right edge
    scores = torch.zeros(2, n, n)
    scores[0, 0, 0] = 4.0  # only the top-left patch is anomalous
    m = assemble_map(scores, 20, 8, 5)
    assert m.shape == (2, 20, 20)
    assert m[0, 0, 0] == 4.0 and m[0, 6, 6] == 1.0 and m[0, 10, 10] == 0.0 and m[1].abs().sum() == 0


def test_warmup_then_cosine():
    assert warmup_cosine(0.0, 0.1) < 0.02 and warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5) and warmup_cosine(1.0, 0.1) == pytest.approx(0.0)


# -- CutPaste --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["binary", "scar", "3way"])
def test_cutpaste_trains_scores_an_obvious_defect_higher_and_maps_it(normal_images, variant):
    events = []
    method = build_method("cutpaste", **CUTPASTE, variant=variant)
    method.fit(normal_images, FitContext(device=CPU, on_progress=events.append))
    losses = [e["loss"] for e in events if e["loss"] is not None]
    assert losses and all(np.isfinite(losses))
    assert method.head_[-1].out_features == {"binary": 2, "scar": 2, "3way": 3}[variant]

    rng = np.random.default_rng(5)
    normals = [textured(rng, 48) for _ in range(4)]
    wide = textured(rng, 80)[:40]
    pred = method.predict([_with_square(rng), *normals, wide])
    assert pred.scores.shape == (6,) and np.isfinite(pred.scores).all()
    assert pred.scores[0] > pred.scores[1:5].max()
    assert [m.shape for m in pred.anomaly_maps] == [(48, 48)] * 5 + [(40, 80)]
    amap = pred.anomaly_maps[0]
    inside = np.zeros(amap.shape, bool)
    inside[20:32, 10:22] = True
    assert amap[inside].mean() > amap[~inside].mean()
    y, x = np.unravel_index(amap.argmax(), amap.shape)  # within one patch (16 px) of the square
    assert 20 - 16 <= y < 32 + 16 and 10 - 16 <= x < 22 + 16, f"map peak at {(y, x)}, square at rows 20-31, cols 10-21"
    assert pred.embeddings.shape == (6, 64)


def test_cutpaste_whole_image_score_and_training():
    rng = np.random.default_rng(1)
    images = [textured(rng, 48) for _ in range(16)]
    method = build_method("cutpaste", **CUTPASTE, train_on="images", image_score="image", normalize="none")
    method.fit(images, FitContext(device=CPU))
    pred = method.predict([_with_stripes(rng), *[textured(rng, 48) for _ in range(4)]])
    assert pred.scores[0] > pred.scores[1:].max()
    # The image score is the project's gaussian scorer on the encoder embeddings of the normal images.
    from adcore.scoring import build_scorer

    train = method.predict(images).embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = build_scorer("gaussian").fit(train.astype(np.float64)).score(pred.embeddings)
    np.testing.assert_allclose(pred.scores, expected, rtol=2e-3)


def test_cutpaste_refuses_a_state_from_another_encoder(normal_images):
    method = build_method("cutpaste", **{**CUTPASTE, "epochs": 1}).fit(normal_images, FitContext(device=CPU))
    state = method.state_dict()
    state["built.efficientnet_lite0"] = state.pop("built.resnet")
    with pytest.raises(ValueError, match=r"trained with a \['efficientnet_lite0'\] encoder but resnet"):
        build_method("cutpaste", **CUTPASTE).load_state_dict(state, CPU)


# -- contrastive -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "params",
    [{"loss": "ntxent"}, {"loss": "margin"}, {"loss": "triplet"}, {"loss": "ntxent", "moco": True},
     {"loss": "triplet", "moco": True, "optimizer": "sgd", "learning_rate": 0.03}],
    ids=["ntxent", "margin", "triplet", "moco-ntxent", "moco-triplet-sgd"],
)
def test_contrastive_trains_and_scores_an_obvious_outlier_higher(normal_images, params):
    events = []
    method = build_method("contrastive", **{**CONTRASTIVE, **params})
    method.fit(normal_images, FitContext(device=CPU, on_progress=events.append))
    losses = [e["loss"] for e in events if e["loss"] is not None]
    assert losses and all(np.isfinite(losses))

    rng = np.random.default_rng(5)
    pred = method.predict([_with_stripes(rng), *[textured(rng, 48) for _ in range(4)]])
    assert pred.scores.shape == (5,) and pred.anomaly_maps is None
    assert pred.embeddings.shape == (5, 64)  # the encoder's embedding, not the 64-d projection by chance:
    assert method.head_[-1].out_features == 64 and method.encoder_.embedding_dim == 64
    assert pred.scores[0] > pred.scores[1:].max()


def test_contrastive_embeddings_come_from_the_encoder_and_score_is_the_gaussian(normal_images):
    params = {**CONTRASTIVE, "projection_dim": 16, "epochs": 2}
    method = build_method("contrastive", **params).fit(normal_images, FitContext(device=CPU))
    pred = method.predict(normal_images[:4])
    assert pred.embeddings.shape == (4, 64)
    from adcore.scoring import build_scorer

    train = method.predict(normal_images).embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = build_scorer("gaussian").fit(train.astype(np.float64)).score(pred.embeddings)
    np.testing.assert_allclose(pred.scores, expected, rtol=2e-3)


def test_contrastive_save_load_gives_identical_scores(normal_images, tmp_path):
    params = {**CONTRASTIVE, "moco": True, "epochs": 2}
    method = build_method("contrastive", **params).fit(normal_images, FitContext(device=CPU))
    save_file(method.state_dict(), str(tmp_path / "state.safetensors"))
    loaded = build_method("contrastive", **params).load_state_dict(load_file(str(tmp_path / "state.safetensors")), CPU)
    images = [_with_stripes(np.random.default_rng(2)), normal_images[0], textured(np.random.default_rng(3), 64)]
    np.testing.assert_array_equal(method.score(images), loaded.score(images))
    assert method.dense_features(torch.rand(1, 3, 48, 48)).shape == (1, 16 + 32, 6, 6)


# -- budget (both methods) ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cutpaste", "contrastive"])
def test_budget_ends_training_early_and_keeps_a_working_model(normal_images, name):
    events = []
    params = CUTPASTE if name == "cutpaste" else CONTRASTIVE
    ctx = FitContext(device=CPU, budget_s=0.0, on_progress=events.append)
    method = build_method(name, **{**params, "epochs": 1000}).fit(normal_images, ctx)
    steps = [e["step"] for e in events if e["phase"] == "training"]
    assert ctx.stopped_by_budget and steps == [1]  # one step, then the budget ended it
    assert events[-1]["phase"] == "fitting the Gaussian"
    assert np.isfinite(method.score(normal_images[:3])).all()
