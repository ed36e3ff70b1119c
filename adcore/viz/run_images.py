"""The images behind a run's result rows: read back from the run's data folder, and its synthetic
defects pasted again exactly as training pasted them (none is stored)."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np

from adcore.data import ImageError, load_image
from adcore.threshold import synthetic_group_name


# --- the images of a run's rows ---------------------------------------------------------------


def run_data_root(config: dict[str, Any]) -> PurePath | None:
    """The folder the run's images were read from (``config["data"]["root"]``), if recorded."""
    data = config.get("data") or {}
    root = data.get("root") or data.get("path")
    return PurePath(root) if root else None


def run_row_images(
    run: Any, rows: Sequence[int], synthetic: Sequence[np.ndarray] | None = None
) -> list[np.ndarray | None]:
    """HWC uint8 images of rows of ``run.results``; None where one cannot be read (see ``run_row_image``).
    ``synthetic``: the run's ``synthetic_images`` if the caller keeps them, else pasted here once."""
    out: list[np.ndarray | None] = []
    for row in rows:
        try:
            if str(run.results["role"][int(row)]) == "synthetic" and synthetic is None:
                synthetic = synthetic_images(run)
            out.append(run_row_image(run, int(row), synthetic))
        except ImageError:
            out.append(None)
    return out


def run_row_image(run: Any, row: int, synthetic: list[np.ndarray] | None = None) -> np.ndarray:
    """The HWC uint8 image of one row of ``run.results``; raises ImageError saying why it cannot.

    Rows are read from the run's data folder by ``rel_path``. A synthetic row's ``rel_path`` is the
    hold-out image it was pasted onto, so synthetic rows are pasted again exactly as training did
    (``adcore.training.synthetic_defects`` on the hold-out images, same seed): none is stored.
    ``synthetic`` is that list of pasted images if the caller has it already.
    """
    results = run.results
    if str(results["role"][row]) != "synthetic":
        return _read_run_file(run, str(results["rel_path"][row]))
    synthetic = synthetic_images(run) if synthetic is None else synthetic
    position = synthetic_position(results, row)
    if position >= len(synthetic):
        raise ImageError("the synthetic defects of this run cannot be pasted again")
    return synthetic[position]


def synthetic_position(results: dict[str, np.ndarray], row: int) -> int:
    """Which of the run's synthetic defects (in the order training pasted them) synthetic row ``row`` is:
    the index into ``synthetic_images`` and into the stored ``synthetic_thumbnail`` stack."""
    return int(np.count_nonzero(results["role"][:row] == "synthetic"))


def _read_run_file(run: Any, rel_path: str) -> np.ndarray:
    root = run_data_root(run.config)
    if root is None:
        raise ImageError("the run does not record where its images are")
    try:
        return load_image(Path(root) / rel_path)
    except ImageError as exc:
        raise ImageError(f"{Path(root) / rel_path}: {exc}") from None


def synthetic_images(run: Any) -> list[np.ndarray]:
    """The synthetic defects of a run (HWC uint8, in the order of its synthetic rows), pasted again
    onto its hold-out images as training did; raises ImageError if one cannot be read."""
    from adcore.photo_cache import shrink
    from adcore.training import synthetic_defects  # imports torch: only when a synthetic row is shown

    rel, role = run.results["rel_path"], run.results["role"]
    # At the size training kept the photos at (runs before the photo cache: as they are).
    side = run.config.get("max_photo_side")
    holdout = [shrink(_read_run_file(run, str(r)), side) for r in rel[role == "holdout"]]
    images, _ = synthetic_defects(holdout, int((run.config.get("params") or {}).get("seed", 0)))
    return images


def row_name(results: dict[str, np.ndarray], row: int) -> str:
    """What a row is called on the pages: its file, or "synthetic scar on <file>"."""
    rel = str(results["rel_path"][row])
    if str(results["role"][row]) == "synthetic":
        return f"{synthetic_group_name(str(results['label'][row]))} on {rel}"
    return rel
