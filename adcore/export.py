"""What a run exports: the run policy behind a model file (``adcore.model_file`` is the format,
``adcore.loaded_model`` loads it back).

Thresholds: a method never decides what is anomalous; the file carries the decision threshold as
``adcore.threshold.Threshold.to_dict()`` ({"value", "how", "details"}) plus "method" (the rule's
short name), chosen by ``adcore.threshold.threshold_for``: the run's saved threshold where it was
chosen for the scores the file gives, else the default rule (a target false-alarm rate on the
hold-out normal scores) on those scores. ``adcore.threshold.is_anomalous`` turns scores into
decisions with the project's convention, score >= threshold.

Frozen pretrained networks (ImageNet backbones) are not part of a method's learned state: they come
from an installed package. The file records their name and a SHA-256 of their weights, and loading
refuses an installation whose weights differ, rather than scoring with different features.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

import adcore
from adcore.files import write_atomic
from adcore.methods import Method
from adcore.model_file import FORMAT_MARKER, FORMAT_VERSION, METHOD_PREFIX, SCORER_PREFIX, write_model_bytes
from adcore.preprocess import input_description
from adcore.runs import Run, load_run
from adcore.scoring import Scorer, build_scorer
from adcore.threshold import Threshold, threshold_for

_SCORER_CHECK_ROWS = 16  # normal embeddings whose scores a loaded scorer must reproduce


# ---------------------------------------------------------------------------------------------
# Heat-map range of a run


def map_display_range(run: Run) -> dict | None:
    """Fixed colour range for heat maps of this run: hold-out normal map pixels' median -> maximum.

    One range for every image, so one heat map can be compared with another; anything at the top
    colour is at least as hot as the hottest pixel seen on a normal image. None if the run has no maps.
    """
    maps, roles = run.results.get("anomaly_map"), run.results.get("role")
    if maps is None or roles is None:
        return None
    for role in ("holdout", "fit"):
        if (roles == role).any():
            pixels = np.asarray(maps[roles == role], dtype=np.float32)
            pixels = pixels[np.isfinite(pixels)]
            if pixels.size:
                low, high = float(np.median(pixels)), float(pixels.max())
                how = f"median -> max of {role} normal map pixels"
                return {"low": low, "high": max(high, low + 1e-6), "how": how}
    return None


# ---------------------------------------------------------------------------------------------
# Embedding scorers: stored as what they were fitted on, refitted (deterministically) on load


@dataclass
class ScorerSpec:
    """An embedding scorer chosen for a run: registry name and parameters (``adcore.scoring.SCORERS``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def saved_with(cls, run: Run) -> ScorerSpec | None:
        """The scorer saved in the run's config (the Scores page's choice), None: the method's own score."""
        saved = run.config.get("scorer")
        if not isinstance(saved, dict) or not saved.get("name"):
            return None
        return cls(saved["name"], dict(saved.get("params") or {}))

    def to_dict(self) -> dict[str, Any]:
        """The choice as ``adcore.threshold.threshold_for`` and the run's config hold it."""
        return {"name": self.name, "params": dict(self.params)}


def fit_run_scorer(run: Run, spec: ScorerSpec) -> tuple[Scorer, np.ndarray, np.ndarray]:
    """(fitted scorer, the normal embeddings it was fitted on, its scores for every row of the run).

    Fitted on the rows whose role is "fit", as ``adcore.scoring.rescore_run`` does.
    """
    if "embedding" not in run.results:
        raise ValueError(f"run {run.run_id} has no embeddings: its method cannot be combined with a scorer")
    normal = run.results["embedding"][run.results["role"] == "fit"]
    scorer = build_scorer(spec.name, **spec.params).fit(normal)
    return scorer, normal, scorer.score(run.results["embedding"])


def _scorer_tensors(scorer: Scorer, normal: np.ndarray) -> dict[str, torch.Tensor]:
    """The scorer slot: the normal embeddings, and the scores of the first few, to check a refit by."""
    return {
        "normal_embeddings": torch.from_numpy(np.array(normal)),
        "check_scores": torch.from_numpy(scorer.score(normal[:_SCORER_CHECK_ROWS]).astype(np.float64)),
    }


# ---------------------------------------------------------------------------------------------
# Export


def preprocessing_description(method: Method) -> dict[str, Any]:
    """What the method does to a photo before its network, as data: the decoding and scaling every
    method shares and the resize rule its inference module carries (the one the method resizes by)."""
    return {
        **input_description(),
        "resize": method.inference_module().resize_rule.to_dict(),
        "normalisation": "none outside the method (a network needing ImageNet statistics applies them itself)",
        "maps": "anomaly maps are upsampled (bilinear) back to each input image's size",
    }


def export_run(
    run: Run | Path | str,
    out: Path | str,
    *,
    threshold: Threshold | None = None,
    scorer: ScorerSpec | None = None,
) -> Path:
    """Write ``run`` as one model file at ``out`` (``adcore.files.write_atomic``) and return its path.

    ``scorer`` (default: ``run.config["scorer"]`` if the run has one) replaces the method's image
    score by an embedding scorer fitted on the run's "fit" embeddings. ``threshold`` defaults to
    ``adcore.threshold.threshold_for`` the scores the model will give (the scorer's, where there is
    one): a threshold saved for other scores is not carried over.
    """
    return write_atomic(out, export_bytes(run, threshold=threshold, scorer=scorer))


def export_bytes(
    run: Run | Path | str, *, threshold: Threshold | None = None, scorer: ScorerSpec | None = None
) -> bytes:
    """The model file of ``run`` as bytes (what ``export_run`` writes), e.g. for a download button."""
    run = run if isinstance(run, Run) else load_run(run)
    method = run.load_method(torch.device("cpu"))
    params = method.get_params()
    tensors = {METHOD_PREFIX + k: v for k, v in method.state_dict().items()}
    scorer = scorer if scorer is not None else ScorerSpec.saved_with(run)
    scorer_header, scores = None, None
    if scorer is not None:
        fitted, normal, scores = fit_run_scorer(run, scorer)
        scorer_header = {
            "name": scorer.name,
            "params": fitted.get_params(),
            "fitted_on": f"{len(normal)} embeddings of the run's 'fit' normal images (refitted when loaded)",
        }
        tensors.update({SCORER_PREFIX + k: v for k, v in _scorer_tensors(fitted, normal).items()})
    if threshold is None:
        threshold = threshold_for(run, None if scorer is None else scorer.to_dict(), scores)
    header = {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": {"name": run.method_name, "params": params},
        "preprocessing": preprocessing_description(method),
        "frozen_backbone": backbone_fingerprint(method),
        "scorer": scorer_header,
        "threshold": {**threshold.to_dict(), "method": str(threshold.details.get("rule", "chosen"))},
        "decision": "anomalous if score >= threshold value",
        "map_display": map_display_range(run),
        "max_photo_side": run.config.get("max_photo_side"),  # photos are shrunk to this before the method
        "source_run": {
            "run_id": run.run_id,
            "name": run.config.get("name", ""),
            "created": run.config.get("created"),
            "augmentations": run.config.get("augmentations"),
            "metrics": run.config.get("metrics"),
            "data_layout": (run.config.get("data") or {}).get("layout"),
        },
        "versions": {
            "format": FORMAT_VERSION,
            "adcore": adcore.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "scikit-learn": _sklearn_version(),
            "python": platform.python_version(),
        },
    }
    return write_model_bytes(tensors, header)


def backbone_fingerprint(method: Method) -> dict | None:
    """Name and SHA-256 of a frozen pretrained network the method uses but does not store.

    Such weights come from an installed package (they are not part of ``state_dict``); loading
    checks the installed ones are the same, so features, and scores, are the ones exported.
    """
    backbone = getattr(method, "backbone_", None)
    if not isinstance(backbone, torch.nn.Module):
        return None
    hasher = hashlib.sha256()
    for key, value in sorted(backbone.state_dict().items()):
        hasher.update(key.encode())
        hasher.update(str(value.dtype).encode() + str(tuple(value.shape)).encode())
        hasher.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"name": getattr(backbone, "name", type(backbone).__name__), "sha256": hasher.hexdigest()}


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__
