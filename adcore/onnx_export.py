"""Export a run's inference as one ONNX graph that scores photos without torch (``adcore.onnx_model``).

The graph takes one photo at a time: ``image`` (1, 3, h, w) float32 in [0, 1] at the network input
shape, and, where the method draws maps, ``photo_size`` (any float tensor of the photo's (H, W):
only its shape is read), and gives ``score`` (1,) and ``anomaly_map`` (1, H, W). Everything the
method does after resizing (exposure normalisation, the network's own input scaling, the memory
search, map smoothing, a combination of members) is inside the graph; what comes before it, the
resize and the scaling, is data in the file's metadata (``adcore.preprocess.ResizeRule.to_dict``,
the rule the method itself resizes by), read back by the torch-free scorer, which runs the same
numpy/Pillow code as the run did.

The network input shape is fixed in the graph (the exposure normalisation's quartile ranks and
the backbones' padding are traced as constants): for a square resize rule every photo fits; with
``keep_aspect`` photos whose shape gives another input shape are refused by the scorer, naming the
shape to export for (``example_size``). Memories of patches (PatchCore) are constants in the graph;
a graph above ``SINGLE_FILE_BYTES`` (protobuf's 2 GiB limit less a margin) keeps its weights in
``<out>.data`` beside it (ONNX external data), which onnxruntime reads from the same folder.

Metadata (``metadata_props``): ``adcore.format`` = ``adcore-onnx``, ``adcore.format_version`` and
``adcore.header``: one JSON object with the method and its parameters, the preprocessing, the input
shape, the threshold chosen by ``adcore.threshold.threshold_for`` for the scores the graph gives
(the method's own), the heat-map colour range, the source run and the versions.
"""

from __future__ import annotations

import json
import platform
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import adcore
from adcore.export import map_display_range, preprocessing_description
from adcore.files import write_atomic
from adcore.methods.base import Method
from adcore.onnx_model import (
    FORMAT_MARKER,
    FORMAT_VERSION,
    IMAGE_INPUT,
    KEY_FORMAT,
    KEY_HEADER,
    KEY_VERSION,
    MAP_OUTPUT,
    SCORE_OUTPUT,
    SIZE_INPUT,
)
from adcore.runs import Run, load_run
from adcore.threshold import Threshold, threshold_for

OPSET = 17
SINGLE_FILE_BYTES = 1_800_000_000


class ExportGraph(nn.Module):
    """One photo through a method's inference module: (image, photo_size) -> (score, map at the photo's
    size), as ``Method.predict`` gives them (the score is the module's own, the map upsampled bilinearly)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor, photo_size: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if hasattr(self.module, "image_outputs"):
            return self.module.image_outputs(image, photo_size)
        out = self.module(image)
        if out.get("maps") is None:
            return (out["scores"],)
        maps = F.interpolate(out["maps"][:, None], size=photo_size.shape[-2:], mode="bilinear", align_corners=False)
        return out["scores"], maps[:, 0]


def inference_module(method: Method) -> nn.Module:
    """The module whose graph is exported, the method's own inference module (in eval mode, its
    networks frozen: a loaded method only scores, and they become constants); ValueError, saying
    why, for a method that cannot export."""
    members = getattr(method, "members_", None) or [method]
    if any(m.config_.get("tile_size") for m in members):
        raise ValueError(
            f"{method.name} with tiles cannot be exported to ONNX: each photo is cut into a varying number of "
            "tiles whose maps are stitched in Python; use the .adcore model file (export without --format onnx)"
        )
    return method.inference_module().eval().requires_grad_(False)


def example_size(run: Run) -> tuple[int, int]:
    """(H, W) of the run's first fit photo that can still be opened: what a keep-aspect export is
    shaped for. ValueError if none can be."""
    root = Path((run.config.get("data") or {}).get("root", ""))
    roles, paths = run.results.get("role"), run.results.get("rel_path")
    if paths is not None:
        for rel in paths[roles == "fit"] if roles is not None else paths:
            try:
                with Image.open(root / str(rel)) as img:
                    return img.height, img.width
            except OSError:
                continue
    raise ValueError(
        f"run {run.run_id}: none of its photos can be opened under {root}, and its method keeps each photo's "
        "aspect ratio, so the input shape is unknown: pass --photo-size HxW (the size of the photos to score)"
    )


def export_onnx(
    run: Run | Path | str,
    out: Path | str,
    *,
    threshold: Threshold | None = None,
    photo_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``run``'s inference as an ONNX file at ``out`` and return its path (see the module doc).

    ``threshold`` defaults to ``threshold_for(run, None)``: the graph gives the method's own score.
    ``photo_size`` (H, W) shapes a keep-aspect export (default: the run's first fit photo's size).
    """
    import onnx

    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out)
    method = run.load_method(torch.device("cpu"))
    module = inference_module(method)
    rule = module.resize_rule
    if photo_size is None:
        photo_size = (rule.size, rule.size) if not rule.keep_aspect else example_size(run)
    input_shape = rule.shape(*photo_size)
    if threshold is None:
        threshold = threshold_for(run, None)
    graph = ExportGraph(module).eval()
    image = torch.rand(1, 3, *input_shape, generator=torch.Generator().manual_seed(0))
    size_like = torch.zeros(photo_size)
    with torch.inference_mode():
        has_maps = len(graph(image, size_like)) == 2
    outputs = [SCORE_OUTPUT, MAP_OUTPUT] if has_maps else [SCORE_OUTPUT]
    inputs = [IMAGE_INPUT, SIZE_INPUT] if has_maps else [IMAGE_INPUT]
    dynamic = {SIZE_INPUT: {0: "height", 1: "width"}, MAP_OUTPUT: {1: "height", 2: "width"}} if has_maps else None
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "graph.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                graph, (image, size_like) if has_maps else (image,), str(traced), dynamo=False,
                input_names=inputs, output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET,
            )  # fmt: skip
        model = onnx.load(str(traced))
    header = _header(run, method, input_shape, threshold, outputs)
    for key, value in ((KEY_FORMAT, FORMAT_MARKER), (KEY_VERSION, str(FORMAT_VERSION)),
                       (KEY_HEADER, json.dumps(header, sort_keys=True, allow_nan=False))):  # fmt: skip
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"adcore {run.method_name} model of run {run.run_id}"
    data_file = out.with_name(out.name + ".data")
    if data_file.exists():
        data_file.unlink()
    if model.ByteSize() > SINGLE_FILE_BYTES:
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=1024)  # fmt: skip
        return out
    return write_atomic(out, model.SerializeToString())


def _header(run: Run, method: Method, input_shape: tuple[int, int], threshold: Threshold,
            outputs: list[str]) -> dict:  # fmt: skip
    import onnx

    return {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": {"name": run.method_name, "params": method.get_params()},
        "preprocessing": {
            **preprocessing_description(method),
            "input_shape": list(input_shape),
            "in_graph": "everything after the scaling: the method's own normalisation, network and map upsampling",
        },
        "inputs": {IMAGE_INPUT: "(1, 3, h, w) float32 at input_shape",
                   SIZE_INPUT: "any float32 tensor of the photo's (H, W); only its shape is used"},
        "outputs": outputs,
        "threshold": {**threshold.to_dict(), "method": str(threshold.details.get("rule", "chosen"))},
        "score": "the method's own score (an embedding scorer of the run is not part of an ONNX export)",
        "decision": "anomalous if score >= threshold value",
        "map_display": map_display_range(run),
        "max_photo_side": run.config.get("max_photo_side"),  # photos are shrunk to this before the graph
        "source_run": {"run_id": run.run_id, "name": run.config.get("name", ""), "created": run.config.get("created")},
        "versions": {
            "format": FORMAT_VERSION,
            "adcore": adcore.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "opset": OPSET,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
