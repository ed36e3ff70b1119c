"""Score photos with an exported ONNX model (``adcore.onnx_export``) using numpy, Pillow and onnxruntime only.

Nothing here imports torch: this is what a scoring PC on the line runs. Photos are decoded by
``adcore.data.load_image`` and resized by the rule stored in the file (``adcore.preprocess``, the
same code the run resized by); the graph does the rest. ``OnnxModel`` offers what
``adcore.batch.score_to_csv`` uses of a loaded model (``predict``, ``decide``, ``threshold``,
``map_display``, ``config``, ``path``), so ``python -m adcore score --model FILE.onnx`` writes the
same CSV and heat maps as with a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adcore.decision import is_anomalous
from adcore.photo_cache import predict_at_side
from adcore.preprocess import ResizeRule, resize_to, to_nchw_float

FORMAT_MARKER = "adcore-onnx"
FORMAT_VERSION = 1
SUFFIX = ".onnx"
KEY_FORMAT, KEY_VERSION, KEY_HEADER = "adcore.format", "adcore.format_version", "adcore.header"
IMAGE_INPUT, SIZE_INPUT = "image", "photo_size"
SCORE_OUTPUT, MAP_OUTPUT = "score", "anomaly_map"


@dataclass(frozen=True)
class StoredThreshold:
    """The decision threshold stored in the file: value, how it was chosen, details (as exported)."""

    value: float
    how: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnnxPrediction:
    """Raw outputs for N photos: scores (N,) float64, higher = more anomalous; maps HxW float32 or None."""

    scores: np.ndarray
    anomaly_maps: list[np.ndarray] | None = None
    reconstructions: None = None  # an ONNX export gives none


class OnnxModel:
    """An exported model ready to score HWC uint8 RGB photos of any size."""

    def __init__(self, path: Path, session: Any, config: dict) -> None:
        self.path, self.session, self.config = path, session, config
        pre = config["preprocessing"]
        self.rule = ResizeRule.from_dict(pre["resize"])
        self.input_shape = tuple(int(v) for v in pre["input_shape"])
        t = config["threshold"]
        self.threshold = StoredThreshold(float(t["value"]), str(t.get("how", "")), dict(t.get("details") or {}))
        self.inputs = {i.name for i in session.get_inputs()}

    @property
    def map_display(self) -> dict | None:
        return self.config.get("map_display")

    def _input(self, image: np.ndarray) -> np.ndarray:
        shape = self.rule.shape(*image.shape[:2])
        if shape != self.input_shape:
            h, w = self.input_shape
            raise ValueError(
                f"a {image.shape[0]}x{image.shape[1]} photo becomes {shape[0]}x{shape[1]} for this network, but "
                f"{self.path.name} was exported for {h}x{w} inputs (photos of its run's aspect ratio); export "
                f"again with --photo-size {image.shape[0]}x{image.shape[1]}"
            )
        return to_nchw_float(resize_to([image], *shape))

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32) -> OnnxPrediction:
        """Scores, and maps at each photo's size where the method draws them; one photo per graph run.
        Photos larger than the run kept its training photos are first shrunk as training did."""
        return predict_at_side(self._predict, images, self.config.get("max_photo_side"))

    def _predict(self, images: Sequence[np.ndarray]) -> OnnxPrediction:
        scores, maps = np.zeros(len(images)), []
        for i, image in enumerate(images):
            feed = {IMAGE_INPUT: self._input(image)}
            if SIZE_INPUT in self.inputs:
                feed[SIZE_INPUT] = np.zeros(image.shape[:2], dtype=np.float32)
            out = dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feed)))
            scores[i] = float(out[SCORE_OUTPUT][0])
            if MAP_OUTPUT in out:
                maps.append(out[MAP_OUTPUT][0].astype(np.float32))
        return OnnxPrediction(scores, maps if maps and len(maps) == len(images) else None)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """True where a raw score is anomalous at this model's threshold."""
        return is_anomalous(scores, self.threshold.value)


def is_onnx_file(path: Path | str) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix; the header is checked when it loads)."""
    return Path(path).suffix.lower() == SUFFIX


def load_onnx_model(path: Path | str, threads: int | None = None) -> OnnxModel:
    """Open an exported model; ValueError says what is wrong with a file that is not one."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("scoring an ONNX model needs onnxruntime: pip install -r requirements-onnx.txt") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
        raise ValueError(f"{path.name} is not a readable ONNX model ({exc})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(KEY_FORMAT) != FORMAT_MARKER:
        raise ValueError(f"{path.name} is an ONNX model but not one exported by adcore (no {FORMAT_MARKER!r} marker)")
    version = meta.get(KEY_VERSION, "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ValueError(f"{path.name} has adcore ONNX format {version!r}; this adcore reads up to {FORMAT_VERSION}")
    try:
        config = json.loads(meta[KEY_HEADER])
        return OnnxModel(path, session, config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: its adcore header is incomplete ({exc})") from None
