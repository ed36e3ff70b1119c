"""Reconstruction methods: autoencoder, MemAE, the adversarial autoencoder (OGNet), student-teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.methods import FitContext, build_method
from adcore.methods.autoencoder import map_statistic
from adcore.methods.gan import pseudo_anomalies
from adcore.methods.memae import MemoryModule, address_entropy, hard_shrink_relu
from adcore.methods.student_teacher import regression_error_and_variance
from adcore.runs import load_run
from adcore.training import TrainSpec, load_teacher, train_run
from tests.helpers import make_tiny_mvtec, textured

SMALL_AE = {"image_size": 32, "epochs": 4, "width": 8, "batch_size": 4}
TINY = {
    "autoencoder": SMALL_AE,
    "memae": {**SMALL_AE, "memory_size": 20, "shrink_threshold": 0.02},
    "ognet": {**SMALL_AE, "discriminator_epochs": 2},
    # The pretrained teacher at 128 px so that its stride-8 grid is 16x16 on these 64 px images.
    "student_teacher": {"image_size": 128, "layers": "8+16", "students": 2, "student_width": 8, "epochs": 4,
                        "batch_size": 4, "map_sigma": 2.0},
}
SQUARE = (30, 14, 10)  # top, left, side of the pasted defect on a 64 px image


@pytest.fixture(scope="module")
def normal_images():
    rng = np.random.default_rng(0)
    return [textured(rng, 64) for _ in range(12)]


def _with_square(rng):
    top, left, side = SQUARE
    image = textured(rng, 64)
    image[top : top + side, left : left + side] = 250
    return image


@pytest.fixture(scope="module")
def fitted(normal_images):
    """Each method fitted once on the tiny normal set (a few steps)."""
    return {name: build_method(name, **params).fit(normal_images, FitContext()) for name, params in TINY.items()}


# -- every method ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TINY))
def test_map_has_the_input_size_and_peaks_on_the_pasted_defect(fitted, name):
    rng = np.random.default_rng(1)
    normal, defect = textured(rng, 64), _with_square(rng)
    pred = fitted[name].predict([normal, defect, normal[:40, :56]])
    assert [m.shape for m in pred.anomaly_maps] == [(64, 64), (64, 64), (40, 56)]
    assert np.isfinite(pred.scores).all()
    assert pred.scores[1] > pred.scores[0]
    top, left, side = SQUARE
    y, x = np.unravel_index(pred.anomaly_maps[1].argmax(), (64, 64))
    margin = 4  # smoothing and a coarse feature grid move the peak a little
    assert top - margin <= y < top + side + margin and left - margin <= x < left + side + margin, (y, x)


# -- autoencoder -----------------------------------------------------------------------------------

def test_autoencoder_rebuilds_a_constant_image_almost_exactly():
    grey = [np.full((32, 32, 3), 120, np.uint8)] * 4
    method = build_method("autoencoder", image_size=32, width=8, epochs=60, batch_size=4, learning_rate=1e-2)
    method.fit(grey, FitContext(augmentations=[]))
    recon = method.predict(grey[:1]).reconstructions[0].astype(int)
    assert np.abs(recon - 120).max() <= 3


def test_score_statistics_and_the_default_unchanged():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, 0] = 5.0  # one hot pixel
    maps[1] += 0.5  # everywhere a little
    assert map_statistic(maps, "max", 0.01).tolist() == [5.0, 0.5]
    assert map_statistic(maps, "mean", 0.01).tolist() == pytest.approx([0.05, 0.5])
    assert map_statistic(maps, "top_mean", 0.02).tolist() == pytest.approx([2.5, 0.5])
    assert build_method("autoencoder").get_params()["score_statistic"] == "top_mean"
    with pytest.raises(ValueError, match="score_statistic: 'median' is not one of"):
        build_method("autoencoder", score_statistic="median")


# -- MemAE -----------------------------------------------------------------------------------------

def test_memory_addressing_sums_to_one_shrinks_small_weights_and_passes_gradients():
    torch.manual_seed(0)
    memory = MemoryModule(size=30, channels=8, shrink_threshold=0.05, temperature=0.1)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    rebuilt, weights = memory(z)
    assert rebuilt.shape == z.shape and weights.shape == (18, 30)
    assert torch.allclose(weights.sum(1), torch.ones(18), atol=1e-5)
    raw = torch.softmax(
        torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
        @ torch.nn.functional.normalize(memory.items, dim=1).t() / 0.1, dim=1
    )
    assert (weights[raw < 0.05] == 0).all() and (weights[raw > 0.05] > 0).all()
    (rebuilt.sum() + address_entropy(weights)).backward()
    assert z.grad.abs().sum() > 0 and memory.items.grad.abs().sum() > 0


def test_hard_shrinkage_zeroes_below_the_threshold_and_renormalises():
    w = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = hard_shrink_relu(w, 0.1)
    assert out[0, 3] == 0 and torch.allclose(out.sum(), torch.tensor(1.0))
    assert torch.allclose(out[0, :3], w[0, :3] / w[0, :3].sum(), atol=1e-6)


def test_memae_output_is_a_combination_of_memory_items(fitted, normal_images):
    method = fitted["memae"]
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        _, rebuilt, weights = method.net_.forward_with_weights(x)
        expected = (weights @ method.net_.memory.items).view(2, 2, 2, -1).permute(0, 3, 1, 2)
    assert torch.allclose(weights.sum(1), torch.ones(len(weights)), atol=1e-5)
    assert (weights == 0).float().mean() > 0.5  # shrinkage leaves each location few items
    assert torch.allclose(rebuilt, expected, atol=1e-6)


# -- adversarial autoencoder -----------------------------------------------------------------------

def test_pseudo_anomalies_are_old_reconstructions_and_averages_of_two_different_images():
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.4, 1.0)])
    old = torch.full_like(x, 0.7)
    out = pseudo_anomalies(x, old)
    assert out.shape == (6, 3, 4, 4)
    assert torch.equal(out[:3], old)
    means = [float(m.mean()) for m in out[3:]]
    assert means == pytest.approx([0.5, 0.2, 0.7])  # each with a different image, never itself


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adversarial_training_stays_finite_and_does_not_collapse(normal_images, seed):
    method = build_method("ognet", **{**TINY["ognet"], "seed": seed, "epochs": 20})
    ctx = FitContext()
    method.fit(normal_images, ctx)
    losses = [e["loss"] for e in ctx.history]
    assert losses and np.isfinite(losses).all() and max(losses) < 50
    rng = np.random.default_rng(10 + seed)
    images = [textured(rng, 64) for _ in range(4)] + [_with_square(rng) for _ in range(2)]
    pred = method.predict(images)
    assert np.isfinite(pred.scores).all() and pred.scores.std() > 1e-3
    recons = np.stack(pred.reconstructions).astype(float)
    # Different inputs are not all rebuilt as one image (a plain autoencoder reaches 1.3-1.9 here).
    assert recons.std(0).mean() > 0.5
    disc = method.discriminator_scores(np.stack([np.asarray(im[:32, :32]) for im in images]))
    assert np.isfinite(disc).all() and disc.std() > 1e-4


# -- student-teacher -------------------------------------------------------------------------------

def test_students_variance_is_zero_when_they_agree_and_error_measures_the_miss():
    target = torch.randn(2, 5, 4, 4)
    agree = target[None].repeat(3, 1, 1, 1, 1) + 0.5
    error, variance = regression_error_and_variance(agree, target)
    assert torch.allclose(variance, torch.zeros(2, 4, 4)) and torch.allclose(error, torch.full((2, 4, 4), 0.25))
    disagree = torch.stack([target - 1, target + 1])
    error, variance = regression_error_and_variance(disagree, target)
    assert torch.allclose(error, torch.zeros(2, 4, 4), atol=1e-6) and torch.allclose(variance, torch.ones(2, 4, 4))


def test_student_teacher_learns_from_another_runs_encoder_and_keeps_its_weights(tmp_path):
    data = make_tiny_mvtec(tmp_path / "set", n_train=8, n_defect=2, size=64)
    teacher_run = train_run(
        TrainSpec(data=str(data), method="autoencoder", params={**SMALL_AE, "image_size": 64}), tmp_path / "runs"
    )
    params = {"teacher": str(teacher_run), "image_size": 64, "students": 2, "student_width": 8, "epochs": 3,
              "batch_size": 4, "map_sigma": 1.0}
    rng = np.random.default_rng(0)
    normal = [textured(rng, 64) for _ in range(8)]
    student = build_method("student_teacher", **params)
    with pytest.raises(ValueError, match="must be loaded by the caller"):
        student.fit(normal, FitContext())  # a method never opens the run store itself
    method = student.fit(normal, FitContext(teacher=load_teacher(student, torch.device("cpu"))))
    assert method.stride_ == 16  # the autoencoder's latent is at 1/16 of the image size
    images = [_with_square(rng), textured(rng, 64)]
    expected = method.predict(images)
    assert expected.anomaly_maps[0].shape == (64, 64)
    state = method.state_dict()
    assert any(k.startswith("teacher.net.") for k in state)
    # Training (not the method) opens the teacher's run: a run trained through train_run scores alike.
    spec = TrainSpec(data=str(data), method="student_teacher", params=params)
    student_run = load_run(train_run(spec, tmp_path / "runs"))
    assert student_run.config["params"]["teacher"] == str(teacher_run)
    assert np.isfinite(student_run.load_method().score(images)).all()
    import shutil

    shutil.rmtree(teacher_run)  # an exported model must not need the teacher's run folder
    loaded = build_method("student_teacher", **params).load_state_dict(state)
    np.testing.assert_array_equal(loaded.predict(images).scores, expected.scores)


def test_student_teacher_rejects_a_teacher_that_is_neither_backbone_nor_run(normal_images):
    with pytest.raises(ValueError, match="neither a pretrained backbone"):
        build_method("student_teacher", teacher="/no/such/run", image_size=64).fit(normal_images, FitContext())


@pytest.mark.parametrize("name", list(TINY))
def test_scores_are_recorded_during_training_for_the_scores_page(normal_images, name):
    rng = np.random.default_rng(3)
    monitor = {"hold-out normal": normal_images[:3], "synthetic": [_with_square(rng) for _ in range(2)]}
    ctx = FitContext(monitor=monitor, snapshots=2)
    method = build_method(name, **TINY[name]).fit(normal_images, ctx)
    snapshots = [h for h in ctx.history if h["phase"] == "epoch scores"]
    assert [h["epoch"] for h in snapshots] == [2, 4]
    assert all(len(h["scores"]["hold-out normal"]) == 3 and len(h["scores"]["synthetic"]) == 2 for h in snapshots)
    assert all(np.isfinite(h["scores"]["synthetic"]).all() for h in snapshots)
    # Scoring between epochs must leave the networks in the mode training needs, and the end result usable.
    assert np.isfinite(method.score(normal_images[:2])).all()
