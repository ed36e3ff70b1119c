"""How a photo becomes a network input, in numpy and Pillow only: the resize rule and the scaling.

Shared by the torch methods (``adcore.methods.base``) and the torch-free ONNX scorer
(``adcore.onnx_model``), so an exported model resizes photos by the very code its run used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

RESIZE_INTERPOLATION = "bilinear (Pillow)"


def resize_to(images: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """HWC uint8 RGB images of any sizes -> (N, height, width, 3) uint8, bilinear, no crop."""
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[0] == height and image.shape[1] == width:
            out[i] = image
        else:
            out[i] = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return out


def aspect_shape(height: int, width: int, size: int, multiple: int = 32) -> tuple[int, int]:
    """The (H, W) with about ``size`` x ``size`` pixels and the photo's width:height ratio, each side a
    multiple of ``multiple`` (so every stride of a backbone divides it) and at least one ``multiple``."""
    scale = size / math.sqrt(height * width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


@dataclass(frozen=True)
class ResizeRule:
    """Where a photo of any size is resized to before the network: the ``size`` x ``size`` square
    (squashed, nothing cropped), or with ``keep_aspect`` about that many pixels at the photo's
    width:height ratio, sides in multiples of ``multiple`` (``aspect_shape``)."""

    size: int
    keep_aspect: bool = False
    multiple: int = 32

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """The network input (H, W) of a ``height`` x ``width`` photo."""
        if self.keep_aspect:
            return aspect_shape(height, width, self.size, self.multiple)
        return self.size, self.size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interpolation": RESIZE_INTERPOLATION,
                "mode": "keep aspect ratio" if self.keep_aspect else "squash to a square (aspect ratio not kept)"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResizeRule:
        return cls(int(data["size"]), bool(data["keep_aspect"]), int(data.get("multiple", 32)))


def to_nchw_float(batch: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]: what every network here takes."""
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)


def input_description() -> dict[str, Any]:
    """The scaling every method applies after resizing, as data (normalisation beyond it is the
    network's own, inside the model)."""
    return {
        "decode": "adcore.data.load_image: RGB, EXIF orientation applied, alpha composited on black, 16-bit scaled to 8-bit",
        "input": "HWC uint8 RGB, any size",
        "scale": "float32 = uint8 / 255, range [0, 1], layout NCHW",
    }
