"""The contract every registered method keeps, checked for each entry of the registry: a new method
gets these tests by registering itself.

Fit on tiny images; outputs of the documented shapes (a score per image, higher on an obvious
defect; maps, embeddings and reconstructions per image at the image's own size); saved and loaded
through safetensors it scores identically; a stop request and a time budget are honoured; progress
is reported and, for methods trained in epochs, the monitor images are scored after the last one.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from adcore.methods import METHODS, Cancelled, FitContext, build_method, build_saved_method, get_method_class
from tests.helpers import textured

CPU = torch.device("cpu")
# Small values for parameters by name, used wherever a method has a parameter of that name (within
# its range), so that a new method is fitted small without an entry here.
TINY_BY_PARAM = {
    "image_size": 64,
    "epochs": 2,
    "discriminator_epochs": 1,
    "batch_size": 4,
    "width": 8,
    "student_width": 8,
    "students": 2,
    "memory_size": 16,
    "search_images": 12,
    "patch_stride": 16,
    "segmenter_width": 16,
    "head_dim": 16,
}
NAMES = METHODS.names()


def tiny_params(name: str, **changes) -> dict:
    params = {}
    for spec in get_method_class(name).param_specs():
        if spec.name in changes:
            params[spec.name] = changes[spec.name]
        elif spec.name in TINY_BY_PARAM:
            value = TINY_BY_PARAM[spec.name]
            if spec.low is not None:
                value = max(value, type(value)(spec.low))
            if spec.high is not None:
                value = min(value, type(value)(spec.high))
            params[spec.name] = value
    return params


def epochs_param(name: str):
    """The method's ``epochs`` parameter, or None for a method that is not trained in epochs."""
    return next((spec for spec in get_method_class(name).param_specs() if spec.name == "epochs"), None)


def trained_in_epochs(name: str) -> bool:
    return epochs_param(name) is not None


# Self-supervised encoders trained from scratch for two epochs on eight photos have not learned
# enough to rank one photo; their own tests check the ranking after real training.
NO_RANKING_WHEN_TINY = {
    "contrastive": "tests/test_contrastive_cutpaste.py::test_contrastive_trains_and_scores_an_obvious_outlier_higher",
    "cutpaste": "tests/test_contrastive_cutpaste.py::test_cutpaste_trains_scores_an_obvious_defect_higher_and_maps_it",
}


def with_defect(rng: np.random.Generator) -> np.ndarray:
    image = textured(rng, 64)
    image[20:40, 24:44] = 250  # a bright square over a tenth of the photo
    return image


@pytest.fixture(scope="module")
def normal_images():
    rng = np.random.default_rng(0)
    return [textured(rng, 64) for _ in range(8)]


@pytest.fixture(scope="module")
def probe():
    """Two normal photos, one with an obvious defect, and one of another shape (48 x 64)."""
    rng = np.random.default_rng(1)
    return [textured(rng, 64), textured(rng, 64), with_defect(rng), textured(rng, 64)[:48]]


@pytest.fixture(scope="module")
def fitted(normal_images):
    """name -> (method, its FitContext, its progress events), each method fitted once, lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            events = []
            ctx = FitContext(device=CPU, on_progress=events.append, monitor={"normal": normal_images[:3]}, snapshots=2)
            cache[name] = (build_method(name, **tiny_params(name)).fit(normal_images, ctx), ctx, events)
        return cache[name]

    return get


def test_every_method_is_covered():
    assert NAMES and len(NAMES) == len(set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_outputs_have_the_documented_shapes(fitted, probe, name):
    method, _, _ = fitted(name)
    pred = method.predict(probe)
    assert pred.scores.shape == (len(probe),) and pred.scores.dtype == np.float64
    assert np.isfinite(pred.scores).all()
    np.testing.assert_array_equal(method.score(probe), pred.scores)
    sizes = [image.shape[:2] for image in probe]
    if pred.embeddings is not None:
        assert pred.embeddings.ndim == 2 and len(pred.embeddings) == len(probe)
        assert pred.embeddings.dtype == np.float32 and np.isfinite(pred.embeddings).all()
    if pred.anomaly_maps is not None:
        assert [m.shape for m in pred.anomaly_maps] == sizes
        assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in pred.anomaly_maps)
    if pred.reconstructions is not None:
        assert [r.shape for r in pred.reconstructions] == [(*s, 3) for s in sizes]
        assert all(r.dtype == np.uint8 for r in pred.reconstructions)
    # One image at a time scores as in a batch (no state carried between batches).
    np.testing.assert_allclose(method.score(probe[2:3]), pred.scores[2:3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_module_carries_the_preprocessing_the_method_resizes_by(fitted, probe, name):
    """The resize rule an export describes is the inference module's, and it gives the input shape the
    method really feeds its network, for a square photo and another shape."""
    from adcore.export import preprocessing_description

    method, _, _ = fitted(name)
    rule = method.inference_module().resize_rule
    assert preprocessing_description(method)["resize"] == rule.to_dict()
    for image in (probe[0], probe[3]):
        (_, x), = list(method._shaped_batches([image], 1))
        assert tuple(x.shape[-2:]) == tuple(rule.shape(*image.shape[:2]))


@pytest.mark.parametrize("name", NAMES)
def test_an_obvious_defect_scores_higher_than_the_normal_photos(fitted, probe, name):
    if name in NO_RANKING_WHEN_TINY:
        pytest.skip(f"untrained at this size; ranking checked in {NO_RANKING_WHEN_TINY[name]}")
    method, _, _ = fitted(name)
    pred = method.predict(probe[:3])
    assert pred.scores[2] > pred.scores[:2].max(), pred.scores
    # Where on the map is each method's own test: at these tiny sizes some grids are 4 x 4.


@pytest.mark.parametrize("name", NAMES)
def test_saved_and_loaded_through_safetensors_it_scores_identically(fitted, probe, name, tmp_path):
    method, _, _ = fitted(name)
    save_file(method.state_dict(), str(tmp_path / "state.safetensors"))
    loaded = build_saved_method(name, method.get_params()).load_state_dict(
        load_file(str(tmp_path / "state.safetensors")), device=CPU
    )
    a, b = method.predict(probe), loaded.predict(probe)
    np.testing.assert_array_equal(a.scores, b.scores)
    for part in ("embeddings", "anomaly_maps", "reconstructions"):
        x, y = getattr(a, part), getattr(b, part)
        assert (x is None) == (y is None), part
        if x is not None:
            assert all(np.array_equal(p, q) for p, q in zip(x, y)), part
    if callable(getattr(method, "dense_features", None)):  # what a student-teacher run learns from it
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(method.dense_features(x), loaded.dense_features(x))


def _module_keys(method) -> set[str]:
    """What a saved state must hold: the inference module's keys, each frozen network's weights
    replaced by its one marker, and the tensors saved beside the module's."""
    module = method.inference_module()
    frozen = {f"{path}.": m.name for path, m in module.named_modules(remove_duplicate=False)
              if any(m is f for f in method.frozen_modules())}
    keys = {k for k in module.state_dict() if not k.startswith(tuple(frozen))}
    return keys | {prefix + name for prefix, name in frozen.items()} | set(method._alongside_tensors())


@pytest.mark.parametrize("name", NAMES)
def test_the_saved_state_is_the_inference_modules_state_and_loads_strictly(fitted, name):
    method, _, _ = fitted(name)
    state = method.state_dict()
    assert set(state) == _module_keys(method)
    params = method.get_params()
    # A module key removed, or one added, is refused rather than loaded half-way.
    own = sorted(k for k in method.inference_module().state_dict() if k in state)
    missing = {k: v for k, v in state.items() if k != own[-1]}
    with pytest.raises((RuntimeError, ValueError), match="Missing key|missing"):
        build_saved_method(name, params).load_state_dict(missing, device=CPU)
    with pytest.raises((RuntimeError, ValueError), match="Unexpected key|unexpected"):
        build_saved_method(name, params).load_state_dict({**state, "not_a_part.weight": torch.ones(1)}, device=CPU)


def _old_patchcore_layout(m) -> dict:
    """How adcore wrote a PatchCore before its state was its inference module's (``_state_tensors``)."""
    state = {"bank": m.model_.bank, f"backbone.{m.backbone_.name}": torch.ones(1)}
    if m.model_.projection is not None:
        state["projection"] = m.model_.projection
    return state


def _old_autoencoder_layout(m) -> dict:
    state = {f"net.{k}": v for k, v in m.net_.state_dict().items()}
    state["err_mean"], state["err_std"] = m.model_.err_mean, m.model_.err_std
    return state


def _old_auto_layout(m) -> dict:
    doc = json.loads(bytes(m.state_dict()["selection_json"].numpy().tobytes()).decode())
    doc["selection"].pop("position", None)  # written before per-position scales existed
    selection = torch.frombuffer(bytearray(json.dumps(doc).encode()), dtype=torch.uint8).clone()
    state = {"calibration": m.model_.calibration, "selection_json": selection}
    for k, member in enumerate(m.members_):
        state.update({f"member{k}.{key}": v for key, v in _old_patchcore_layout(member).items()})
    return state


# Key layouts written by adcore before the methods' state became their inference module's, built
# here from a fitted method's parts exactly as the old code wrote them (no weights file committed).
OLD_LAYOUTS = {"patchcore": _old_patchcore_layout, "autoencoder": _old_autoencoder_layout, "auto": _old_auto_layout}


@pytest.mark.parametrize("name", sorted(OLD_LAYOUTS))
def test_a_state_saved_in_the_old_key_layout_loads_and_scores_identically(fitted, probe, name):
    method, _, _ = fitted(name)
    old = {k: v.detach().cpu().clone() for k, v in OLD_LAYOUTS[name](method).items()}
    loaded = build_saved_method(name, method.get_params()).load_state_dict(old, device=CPU)
    np.testing.assert_array_equal(loaded.score(probe), method.score(probe))


def test_a_patchcore_saved_with_a_projection_in_the_old_layout_loads(normal_images, probe):
    method = build_method("patchcore", **tiny_params("patchcore", projection_dim=32)).fit(normal_images, FitContext(device=CPU))
    old = {k: v.detach().cpu().clone() for k, v in _old_patchcore_layout(method).items()}
    assert "projection" in old
    loaded = build_saved_method("patchcore", method.get_params()).load_state_dict(old, device=CPU)
    np.testing.assert_array_equal(loaded.score(probe), method.score(probe))


@pytest.mark.parametrize("name", NAMES)
def test_it_reports_progress_and_scores_the_monitor_images_after_the_last_epoch(fitted, name):
    _, ctx, events = fitted(name)
    assert events, "no progress reported"
    for event in events:
        assert {"step", "total_steps", "phase", "elapsed_s"} <= set(event)
        assert event["step"] >= 0 and (event["total_steps"] == 0 or event["step"] <= event["total_steps"]), event
    epoch_scores = [h for h in ctx.history if h.get("phase") == "epoch scores"]
    if trained_in_epochs(name):
        epochs = tiny_params(name)["epochs"]
        assert epoch_scores and epoch_scores[-1]["epoch"] == epochs
        for entry in epoch_scores:
            assert len(entry["scores"]["normal"]) == 3 and np.isfinite(entry["scores"]["normal"]).all()
        losses = [h["loss"] for h in ctx.history if h.get("loss") is not None]
        assert losses and np.isfinite(losses).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_stop_request_ends_the_fit(normal_images, name):
    stop = threading.Event()
    stop.set()  # pressed before the first step
    with pytest.raises(Cancelled):
        build_method(name, **tiny_params(name)).fit(normal_images, FitContext(device=CPU, stop_event=stop))

    stop, after = threading.Event(), []

    def on_progress(event):  # pressed at the first report: nothing is reported after it
        if stop.is_set():
            after.append(event)
        stop.set()

    with pytest.raises(Cancelled):
        build_method(name, **tiny_params(name)).fit(
            normal_images, FitContext(device=CPU, stop_event=stop, on_progress=on_progress)
        )
    assert not after


@pytest.mark.parametrize("name", NAMES)
def test_a_spent_budget_ends_training_early_and_keeps_a_working_model(normal_images, probe, name):
    epochs = {"epochs": int(epochs_param(name).high)} if trained_in_epochs(name) else {}
    events = []
    ctx = FitContext(device=CPU, budget_s=0.0, on_progress=events.append)
    method = build_method(name, **tiny_params(name, **epochs)).fit(normal_images, ctx)
    assert ctx.stopped_by_budget
    assert np.isfinite(method.score(probe)).all()
    if trained_in_epochs(name):  # each training phase ends before its last step, the main one far before
        training = [e for e in events if e.get("loss") is not None]
        assert training and all(e["step"] < e["total_steps"] for e in training)
        assert training[0]["step"] < training[0]["total_steps"] / 10
