"""Detection methods, looked up by name: ``get_method_class``, ``build_method``, ``list_methods``."""

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
