"""A model ready to score, loaded from a model file (``adcore.model_file``) or built from a run folder.

Loading rebuilds the method from the file's parameters and weights, checks the frozen pretrained
network is the one exported, refits an embedding scorer from its stored normal embeddings (refusing
the file where the check scores are not reproduced) and reads the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from adcore.device import pick_device
from adcore.export import ScorerSpec, backbone_fingerprint, fit_run_scorer, map_display_range
from adcore.methods import Method, Prediction, build_saved_method
from adcore.model_file import METHOD_PREFIX, SCORER_PREFIX, read_model_bytes
from adcore.photo_cache import predict_at_side
from adcore.runs import Run, load_run
from adcore.scoring import Scorer, build_scorer
from adcore.threshold import Threshold, is_anomalous, threshold_for


@dataclass
class LoadedModel:
    """A model ready to score: ``predict`` gives what the exported run would give for the same images.

    ``config`` is the file's JSON header (method, preprocessing, threshold, versions...), ``scorer``
    the fitted embedding scorer that replaces the method's image score, or None. ``model_from_run``
    builds the same object from a run folder.
    """

    path: Path
    method: Method
    threshold: Threshold
    config: dict
    scorer: Scorer | None = None

    @property
    def map_display(self) -> dict | None:
        return self.config.get("map_display")

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> Prediction:
        """The method's prediction for HWC uint8 images, scores from the scorer where there is one."""
        side = self.config.get("max_photo_side")  # the size training kept the photos at
        prediction = predict_at_side(lambda ims: self.method.predict(ims, batch_size=batch_size), images, side)
        if self.scorer is not None:
            prediction.scores = self.scorer.score(prediction.embeddings)
        return prediction

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """True where a raw score is anomalous at this model's threshold."""
        return is_anomalous(scores, self.threshold.value)


def model_from_run(run: Run | Path | str, device: torch.device | str = "auto") -> LoadedModel:
    """A run folder as a ``LoadedModel``: its method, scorer (if its config names one) and threshold."""
    run = run if isinstance(run, Run) else load_run(run)
    device = pick_device(device) if isinstance(device, str) else device
    scorer, scores, spec = None, None, ScorerSpec.saved_with(run)
    if spec is not None:
        scorer, _, scores = fit_run_scorer(run, spec)
    method = run.load_method(device)
    config = {"method": {"name": run.method_name, "params": method.get_params()}, "map_display": map_display_range(run),
              "max_photo_side": run.config.get("max_photo_side")}
    threshold = threshold_for(run, None if spec is None else spec.to_dict(), scores)
    return LoadedModel(run.path, method, threshold, config, scorer)


def load_model(path: Path | str, device: torch.device | str = "auto") -> LoadedModel:
    """Verify and load a model file; the method is rebuilt from the file's parameters and weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return load_model_bytes(path.read_bytes(), path.name, device)


def load_model_bytes(data: bytes, name: str = "model.adcore", device: torch.device | str = "auto") -> LoadedModel:
    """``load_model`` for the file's bytes (an upload); ``name`` names it in messages."""
    path = Path(name)
    header, tensors = read_model_bytes(data, path.name)
    device = pick_device(device) if isinstance(device, str) else device
    try:
        spec = header["method"]
        method = build_saved_method(spec["name"], spec["params"])
        state = {k[len(METHOD_PREFIX) :]: v for k, v in tensors.items() if k.startswith(METHOD_PREFIX)}
        method.load_state_dict(state, device=device)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path.name}: the weights do not fit the method it names ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path.name} cannot be used by this adcore: {exc}") from None
    expected, installed = header.get("frozen_backbone"), backbone_fingerprint(method)
    if expected and installed != expected:
        raise ValueError(
            f"{path.name} was made with the pretrained network {expected['name']} "
            f"(sha256 {expected['sha256'][:12]}...), but this installation has different weights "
            f"({installed}); its scores would differ"
        )
    scorer = None
    if header.get("scorer"):
        state = {k[len(SCORER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SCORER_PREFIX)}
        try:
            scorer = _refit_scorer(header, state, path.name)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path.name}: its scorer slot is incomplete ({exc})") from None
    try:
        threshold = Threshold.from_dict(header["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: no usable threshold ({exc})") from None
    return LoadedModel(path=path, method=method, threshold=threshold, config=header, scorer=scorer)


def _refit_scorer(header: dict, state: dict[str, torch.Tensor], name: str) -> Scorer:
    spec = header["scorer"]
    normal = state["normal_embeddings"].numpy()
    scorer = build_scorer(spec["name"], **spec.get("params", {})).fit(normal)
    expected = state["check_scores"].numpy()
    if not np.allclose(scorer.score(normal[: len(expected)]), expected, rtol=1e-5, atol=1e-8):
        raise ValueError(
            f"{name}: its {spec['name']} scorer does not reproduce the exported scores here "
            f"(made with {header.get('versions', {})}); it cannot be used with this installation"
        )
    return scorer
