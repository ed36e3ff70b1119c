"""Export a trained run as one self-contained model file (``.adcore``) and load it back safely.

The file is a plain **safetensors** file:

* the tensors are the method's learned state under ``method/<name>`` and, where the run scores
  images with an embedding scorer (``adcore.scoring.SCORERS``), the scorer slot under
  ``scorer/<name>``: the normal embeddings it is fitted on plus a few check scores. Scorers hold
  scikit-learn objects that have no plain-tensor form without pickling, so loading refits the scorer
  (deterministic: seeded) and refuses the file if the check scores are not reproduced;
* the safetensors ``__metadata__`` (string -> string) holds ``adcore.format`` = ``adcore-model``,
  ``adcore.format_version``, ``adcore.header`` (one JSON object with every non-tensor part: method
  name and resolved parameters, the preprocessing, the frozen pretrained network's fingerprint, the
  scorer's name and parameters, the threshold and how it was chosen, the heat-map colour range,
  the source run and the versions it was made with) and ``adcore.digest`` = ``sha256:<hex>``.

Why safetensors and not a zip with a manifest: the runs already store weights this way, loading it
cannot execute code (no pickle anywhere: the header is JSON, tensors are raw little-endian bytes
described by JSON), any safetensors tool can open the weights, and there is one file to hash and one
parser to trust instead of a zip reader plus a per-member checksum table.

Integrity: safetensors does not checksum anything, so the digest is SHA-256 over **every byte of
the file** with the 64 hex digits of the digest itself replaced by ``0``. Hashing the exact bytes
(rather than re-serialised tensors and header) means a changed byte anywhere is caught: in the
tensor data, in the JSON, even in the header's padding, and does not depend on safetensors writing
the same bytes in every version. The digest detects corruption and careless edits; it is not a
signature (anyone can recompute it), so a file from an untrusted source is safe to *load* (no code
runs) but its scores are only as trustworthy as its source.

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
import hmac
import json
import platform
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import safetensors
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import adcore
from adcore.device import pick_device
from adcore.files import write_atomic
from adcore.methods import Method, Prediction, build_saved_method
from adcore.photo_cache import predict_at_side
from adcore.runs import Run, load_run
from adcore.scoring import Scorer, build_scorer
from adcore.threshold import Threshold, is_anomalous, threshold_for

FORMAT_MARKER = "adcore-model"
FORMAT_VERSION = 1
SUFFIX = ".adcore"
_SCORER_CHECK_ROWS = 16

_METHOD_PREFIX = "method/"
_SCORER_PREFIX = "scorer/"
_KEY_FORMAT, _KEY_VERSION, _KEY_HEADER, _KEY_DIGEST = (
    "adcore.format",
    "adcore.format_version",
    "adcore.header",
    "adcore.digest",
)
_DIGEST_PREFIX = "sha256:"
_PLACEHOLDER = "0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


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


# ---------------------------------------------------------------------------------------------
# Export


def preprocessing_description(params: dict[str, Any]) -> dict[str, Any]:
    """What the method does to an image before its network (it applies this itself, in ``predict``)."""
    size = int(params["image_size"])
    return {
        "decode": (
            "adcore.data.load_image: RGB, EXIF orientation applied, alpha composited on black, "
            "16-bit scaled to 8-bit"
        ),
        "input": "HWC uint8 RGB, any size",
        "resize": {
            "width": size,
            "height": size,
            "mode": "squash (no crop, aspect ratio not kept)",
            "interpolation": "bilinear (Pillow)",
        },
        "scale": "float32 = uint8 / 255, range [0, 1], layout NCHW",
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
    tensors = {_METHOD_PREFIX + k: v for k, v in method.state_dict().items()}
    scorer = scorer if scorer is not None else ScorerSpec.saved_with(run)
    scorer_header, scores = None, None
    if scorer is not None:
        fitted, normal, scores = fit_run_scorer(run, scorer)
        scorer_header = {
            "name": scorer.name,
            "params": fitted.get_params(),
            "fitted_on": f"{len(normal)} embeddings of the run's 'fit' normal images (refitted when loaded)",
        }
        tensors.update({_SCORER_PREFIX + k: v for k, v in _scorer_tensors(fitted, normal).items()})
    if threshold is None:
        threshold = threshold_for(run, None if scorer is None else scorer.to_dict(), scores)
    header = {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": {"name": run.method_name, "params": params},
        "preprocessing": preprocessing_description(params),
        "frozen_backbone": _backbone_fingerprint(method),
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
    return _serialise(tensors, header)


def _backbone_fingerprint(method: Method) -> dict | None:
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


def _serialise(tensors: dict[str, torch.Tensor], header: dict) -> bytes:
    metadata = {
        _KEY_FORMAT: FORMAT_MARKER,
        _KEY_VERSION: str(FORMAT_VERSION),
        _KEY_HEADER: json.dumps(header, sort_keys=True, allow_nan=False),
        _KEY_DIGEST: _DIGEST_PREFIX + _PLACEHOLDER,
    }
    data = bytearray(save_safetensors(tensors, metadata=metadata))
    start = _digest_position(bytes(data), _PLACEHOLDER)
    digest = hashlib.sha256(data).hexdigest()  # the placeholder is in place while hashing
    data[start : start + 64] = digest.encode("ascii")
    return bytes(data)


def _digest_position(data: bytes, hex_digest: str) -> int:
    """Offset of the digest's hex digits in the file; it must occur exactly once in the header."""
    (header_len,) = struct.unpack("<Q", data[:8])
    needle = f'"{_DIGEST_PREFIX}{hex_digest}"'.encode("ascii")
    header = data[8 : 8 + header_len]
    at = header.find(needle)
    if at < 0 or header.find(needle, at + 1) >= 0:
        raise ValueError("the digest does not appear exactly once in the header")
    return 8 + at + 1 + len(_DIGEST_PREFIX)


# ---------------------------------------------------------------------------------------------
# Load


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


def read_model_file(path: Path | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Verify a model file and return (header, tensors); ValueError says what is wrong with it.

    Nothing from the file is executed: the header is parsed as JSON and the tensors by safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return read_model_bytes(path.read_bytes(), path.name)


def read_model_bytes(data: bytes, name: str = "the model file") -> tuple[dict, dict[str, torch.Tensor]]:
    """``read_model_file`` for the file's bytes (an upload, say); ``name`` is used in messages."""
    metadata, data_len = _parse_container(data, name)
    foreign = f"{name} is a safetensors file but not an adcore model (no {FORMAT_MARKER!r} marker)"
    if _KEY_FORMAT not in metadata and _KEY_DIGEST not in metadata:
        raise ValueError(foreign)
    version = metadata.get(_KEY_VERSION, "")
    if version.isdigit() and int(version) > FORMAT_VERSION:  # a newer format may check itself differently
        raise ValueError(
            f"{name} has model format {version}, newer than this adcore reads ({FORMAT_VERSION}); "
            "upgrade adcore"
        )
    if len(data) < data_len:
        raise ValueError(f"{name} is truncated: {len(data):,} bytes, its header describes {data_len:,}")
    _check_digest(data, metadata.get(_KEY_DIGEST, ""), name)
    # Past the digest, the bytes are exactly as written: what is wrong now was written that way.
    if metadata.get(_KEY_FORMAT) != FORMAT_MARKER:
        raise ValueError(foreign)
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{name}: unknown model format version {version!r}")
    try:
        header = json.loads(metadata[_KEY_HEADER])
        tensors = load_safetensors(data)
    except (KeyError, ValueError, safetensors.SafetensorError) as exc:
        raise ValueError(f"{name}: unreadable model contents ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_MARKER:
        raise ValueError(f"{name}: the model header is not an adcore header")
    return header, tensors


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
        state = {k[len(_METHOD_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_METHOD_PREFIX)}
        method.load_state_dict(state, device=device)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path.name}: the weights do not fit the method it names ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path.name} cannot be used by this adcore: {exc}") from None
    expected, installed = header.get("frozen_backbone"), _backbone_fingerprint(method)
    if expected and installed != expected:
        raise ValueError(
            f"{path.name} was made with the pretrained network {expected['name']} "
            f"(sha256 {expected['sha256'][:12]}...), but this installation has different weights "
            f"({installed}); its scores would differ"
        )
    scorer = None
    if header.get("scorer"):
        state = {k[len(_SCORER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_SCORER_PREFIX)}
        try:
            scorer = _refit_scorer(header, state, path.name)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path.name}: its scorer slot is incomplete ({exc})") from None
    try:
        threshold = Threshold.from_dict(header["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: no usable threshold ({exc})") from None
    return LoadedModel(path=path, method=method, threshold=threshold, config=header, scorer=scorer)


def _check_digest(data: bytes, digest: str, name: str) -> None:
    """Recompute SHA-256 over the file with the digest's hex digits zeroed; refuse on any difference."""
    hex_digest = digest.removeprefix(_DIGEST_PREFIX)
    damaged = f"{name} is damaged or was modified"
    if not digest.startswith(_DIGEST_PREFIX) or not _HEX64.match(hex_digest):
        raise ValueError(f"{damaged}: its digest field is missing or malformed")
    try:
        at = _digest_position(data, hex_digest)
    except ValueError:
        raise ValueError(f"{damaged}: its digest field is malformed") from None
    hasher = hashlib.sha256()
    hasher.update(data[:at])
    hasher.update(_PLACEHOLDER.encode("ascii"))
    hasher.update(data[at + 64 :])
    if not hmac.compare_digest(hasher.hexdigest(), hex_digest):
        raise ValueError(f"{damaged}: its SHA-256 digest does not match its contents")


def _parse_container(data: bytes, name: str) -> tuple[dict[str, str], int]:
    """The safetensors metadata and the file length its header describes, or a clear ValueError."""
    kind = _foreign_kind(data)
    if kind:
        raise ValueError(f"{name} is not an adcore model file: it is {kind}")
    if len(data) < 8:
        raise ValueError(f"{name} is not an adcore model file (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > _MAX_HEADER_BYTES or data[8:9] != b"{":
        raise ValueError(f"{name} is not an adcore model file (not a safetensors file)")
    if 8 + header_len > len(data):
        raise ValueError(f"{name} is truncated (or not a safetensors file): its header runs past the end")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{name} is damaged or not an adcore model file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not an adcore model file (not a safetensors header)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{name} is not an adcore model file (unexpected safetensors metadata)")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ValueError(f"{name} is damaged: tensor {key!r} has no valid data offsets") from None
    return metadata, 8 + header_len + end


def _foreign_kind(data: bytes) -> str | None:
    """A human name for well-known non-model files, to make the refusal specific."""
    if len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS:
        return "a Python pickle, which adcore never loads (unpickling can run arbitrary code)"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save checkpoints are zipped pickles, which adcore never loads)"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if data[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    return None
