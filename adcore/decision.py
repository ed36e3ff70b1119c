"""The one decision rule: an image is anomalous where its raw score is at or above the threshold.

In numpy alone, so the torch-free ONNX scorer decides exactly as the library does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_anomalous(scores: Any, threshold: float) -> np.ndarray:
    """Decisions for raw scores: True where score >= threshold (the project's convention)."""
    return np.asarray(scores, dtype=np.float64) >= float(threshold)
