"""Small image sets built inside tests (nothing is committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def textured(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A smooth random texture, HWC uint8 RGB: stands in for a normal part photo."""
    base = rng.normal(128, 20, (size // 8, size // 8, 3))
    img = np.asarray(Image.fromarray(base.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
    return (img.astype(np.int16) + rng.integers(-6, 7, img.shape)).clip(0, 255).astype(np.uint8)


def textured_set(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` normal-looking textures of ``size`` px from one seed: a small training set."""
    rng = np.random.default_rng(seed)
    return [textured(rng, size) for _ in range(n)]


def make_tiny_mvtec(root: Path, n_train: int = 10, n_test_good: int = 3, n_defect: int = 3, size: int = 48) -> Path:
    """MVTec layout with bright square 'defects' and their masks."""
    rng = np.random.default_rng(0)
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(textured(rng, size)).save(root / f"train/good/{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(textured(rng, size)).save(root / f"test/good/{i:03d}.png")
    for i in range(n_defect):
        img = textured(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 16, 2)
        img[y : y + 10, x : x + 10] = 250
        mask[y : y + 10, x : x + 10] = 255
        Image.fromarray(img).save(root / f"test/spot/{i:03d}.png")
        Image.fromarray(mask).save(root / f"ground_truth/spot/{i:03d}_mask.png")
    return root


def texts(at) -> str:
    """Every piece of text on an AppTest page, to search for a message."""
    kinds = ("markdown", "caption", "success", "info", "warning", "error")
    parts = [e.value for kind in kinds for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)
