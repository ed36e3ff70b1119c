"""Detection methods, looked up by name: ``get_method_class``, ``build_method``, ``list_methods``.

A method is two things side by side in one module here: an ``nn.Module`` that holds everything
fitted (networks as submodules; memories, statistics and calibration as buffers) and whose
``forward`` maps (B, 3, H, W) float images in [0, 1] to a dict with ``scores`` (B,) and, where it
has them, ``maps``, ``embeddings`` and ``reconstructions``; and a ``Method`` subclass, the fit
wrapper (parameters, data, augmentations, progress, budget, cancel), whose ``_build`` sets
``self.model_`` to the unfitted module and whose ``_fit`` fills it. Adding a method is that one
file, decorated with ``@register_method``, plus its import line below: saving (the module's
``state_dict``), strict loading, ONNX export and the contract tests (``tests/test_method_contract.py``)
come from ``adcore.methods.base``.
"""

from __future__ import annotations

from adcore.methods.base import (
    METHODS,
    Cancelled,
    FitContext,
    Method,
    Prediction,
    build_method,
    build_saved_method,
    get_method_class,
    register_method,
)

# Importing a module registers its methods.
from adcore.methods import autoencoder  # noqa: F401  (registers "autoencoder")
from adcore.methods import patchcore  # noqa: F401  (registers "patchcore", "pretrained_gaussian")
from adcore.methods import segmenter  # noqa: F401  (registers "patchcore_segmenter")
from adcore.methods import memae  # noqa: F401  (registers "memae")
from adcore.methods import gan  # noqa: F401  (registers "ognet")
from adcore.methods import student_teacher  # noqa: F401  (registers "student_teacher")
from adcore.methods import contrastive  # noqa: F401  (registers "contrastive")
from adcore.methods import cutpaste  # noqa: F401  (registers "cutpaste")
from adcore.methods import auto  # noqa: F401  (registers "auto")

DEFAULT_METHOD = "auto"  # configures itself from the normal photos (adcore.methods.auto)


def list_methods() -> list[type[Method]]:
    return [METHODS.get(n) for n in METHODS.names()]


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Cancelled",
    "FitContext",
    "Method",
    "Prediction",
    "build_method",
    "build_saved_method",
    "get_method_class",
    "list_methods",
    "register_method",
]
