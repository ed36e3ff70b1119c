"""Batch scoring of folders or zips of any size: list files without decoding, decode per batch, stream out.

``adcore.data.open_image_set`` decodes every image up front to validate a training set; scoring a
large folder instead walks it lazily (``list_images``), decodes one batch at a time with
``adcore.data.load_image`` (the next batch is decoded while the current one is scored), and writes
each batch's CSV rows and heat maps before the next, so memory does not grow with the folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from adcore.data import (
    IMAGE_EXTENSIONS,
    ImageError,
    SkippedFile,
    _find_mvtec_root,
    _rel,
    _walk_files,
    extract_zip,
    load_image,
)
from adcore.export import LoadedModel

_MASK_FOLDER = "ground_truth"  # masks of an MVTec layout are not inputs
_MVTEC_SPLITS = ("train", "test")
_WORKERS = min(4, os.cpu_count() or 1)
_ZIP_MAX_FILES = 10_000_000
_DISK_MARGIN = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One file to score: where it is, its posix path relative to the scored folder, MVTec split/label."""

    path: Path
    rel_path: str
    split: str = ""  # "train"/"test" in an MVTec layout, else ""
    label: str = ""  # the class folder ("good", "crack"...) in an MVTec layout, else ""


@dataclass
class ImageListing:
    """The image files under a folder, walked again on each iteration (nothing decoded, nothing kept).

    ``count`` and ``skipped`` (files that are not images, by extension) come from a first walk.
    """

    folder: Path
    layout: str  # "mvtec" or "plain"
    mvtec_root: Path | None
    count: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)

    def __iter__(self) -> Iterator[ImageEntry]:
        for item in self._walk():
            if isinstance(item, ImageEntry):
                yield item

    def _walk(self) -> Iterator[ImageEntry | SkippedFile]:
        for path in _walk_files(self.folder):
            rel = _rel(path, self.folder)
            split = label = ""
            if self.mvtec_root is not None:
                parts = PurePosixPath(_rel(path, self.mvtec_root)).parts
                if parts[0] == _MASK_FOLDER:
                    continue
                if parts[0] in _MVTEC_SPLITS and len(parts) > 1:
                    split = parts[0]
                    label = parts[1] if len(parts) > 2 else ("good" if split == "train" else "")
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                yield SkippedFile(rel, "not an image")
            else:
                yield ImageEntry(path, rel, split, label)


def list_images(folder: Path | str) -> ImageListing:
    """Every visible file under ``folder`` to score; masks of an MVTec layout are left out.

    Order: each folder's files sorted by name, then its sub-folders sorted by name (a streaming walk
    cannot sort globally without holding every path).

    Layout as in ``adcore.data.open_image_set`` (also an MVTec set inside a chain of single
    sub-folders); in an MVTec layout each entry gets its split and class folder, and images that
    sit elsewhere are still scored (with empty split/label). Hidden files are ignored silently.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    mvtec_root, _ = _find_mvtec_root(folder)
    listing = ImageListing(folder, "plain" if mvtec_root is None else "mvtec", mvtec_root)
    for item in listing._walk():
        if isinstance(item, SkippedFile):
            listing.skipped.append(item)
        else:
            listing.count += 1
    return listing


@contextlib.contextmanager
def open_images(path: Path | str) -> Iterator[ImageListing]:
    """``list_images`` for a folder, or for a zip extracted into a temporary folder removed on exit.

    A zip is extracted with ``adcore.data.extract_zip`` (unsafe members are left out and listed in
    ``skipped``) with limits raised to the free disk space, so its size is bounded only by the disk.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        yield list_images(path)
        return
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a folder nor a .zip file")
    with tempfile.TemporaryDirectory(prefix="adcore-score-") as scratch:
        free = shutil.disk_usage(scratch).free
        skipped = extract_zip(
            path, Path(scratch), max_total_bytes=max(0, free - _DISK_MARGIN), max_files=_ZIP_MAX_FILES
        )
        listing = list_images(scratch)
        listing.skipped = sorted(skipped + listing.skipped, key=lambda s: s.rel_path)
        yield listing


@dataclass
class DecodedBatch:
    """One batch: the entries that decoded with their HWC uint8 images, and the ones that did not."""

    entries: list[ImageEntry]
    images: list[np.ndarray]
    failed: list[SkippedFile]
    n_files: int  # entries + failed


def decoded_batches(
    entries: Iterator[ImageEntry] | ImageListing, batch_size: int, workers: int = _WORKERS
) -> Iterator[DecodedBatch]:
    """Decode ``entries`` batch by batch in a thread pool, one batch ahead of the consumer.

    At most two batches of decoded images exist at a time, whatever the number of entries.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    source = iter(entries)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding

        def submit() -> list:
            return [(e, pool.submit(_decode, e.path)) for e in islice(source, batch_size)]

        pending = submit()
        while pending:
            current, pending = pending, submit()
            batch = DecodedBatch([], [], [], len(current))
            for entry, future in current:
                image, reason = future.result()
                if image is None:
                    batch.failed.append(SkippedFile(entry.rel_path, reason))
                else:
                    batch.entries.append(entry)
                    batch.images.append(image)
            yield batch


def _decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path), None
    except ImageError as exc:
        return None, str(exc)


# ---------------------------------------------------------------------------------------------
# Heat maps

# A perceptually ordered blue -> cyan -> green -> yellow -> red ramp ("turbo"-like), 256 entries.
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 187, 236],
        [49, 242, 153],
        [162, 252, 60],
        [237, 208, 58],
        [251, 128, 34],
        [210, 48, 5],
        [122, 4, 3],
    ],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)],
    axis=1,
).round().astype(np.uint8)


def heatmap_rgb(
    anomaly_map: np.ndarray,
    low: float | None = None,
    high: float | None = None,
    image: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Colour an HxW anomaly map (float) to HWC uint8 RGB, optionally blended over ``image``.

    ``low``/``high`` fix the colour range (the same for every image of a model, so maps compare);
    without them the map's own min/max is used. ``image`` is HWC uint8 RGB of the same H, W;
    ``alpha`` is the heat map's weight in the blend.
    """
    m = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32))
    low = float(m.min()) if low is None else float(low)
    high = float(m.max()) if high is None else float(high)
    scaled = (m - low) / max(high - low, 1e-12)
    rgb = _LUT[np.clip(scaled * 255, 0, 255).astype(np.uint8)]
    if image is None:
        return rgb
    if image.shape[:2] != m.shape:
        raise ValueError(f"image {image.shape[:2]} and map {m.shape} differ in size")
    blended = image.astype(np.float32) * (1 - alpha) + rgb.astype(np.float32) * alpha
    return blended.round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Scoring a folder to CSV


@dataclass
class ScoreSummary:
    """What ``score_to_csv`` did: counts, and every file left out with its reason."""

    scored: int = 0
    anomalous: int = 0
    maps_written: int = 0
    has_maps: bool | None = None  # None until the first batch was scored
    skipped: list[SkippedFile] = field(default_factory=list)


def score_to_csv(
    model: LoadedModel,
    listing: ImageListing,
    out: Path | str,
    *,
    batch_size: int = 32,
    maps_dir: Path | str | None = None,
    map_overlay: bool = True,
    on_batch: Callable[[int], None] | None = None,
    summary: ScoreSummary | None = None,
) -> ScoreSummary:
    """Score every image of ``listing`` with ``model`` in batches and write one CSV row per image.

    Columns: ``path`` (relative to the scored folder), ``score`` (full precision), ``decision``
    (``anomalous``/``normal`` at the model's threshold), plus ``split`` and ``label`` in an MVTec
    layout. Rows are written batch by batch to ``<out>.part`` (``partial_path``), which becomes
    ``out`` at the end; if scoring is interrupted or fails, the ``.part`` file keeps every row scored
    so far (``summary``, when given, is filled in as it goes, to say how many). With ``maps_dir``, a heat-map
    PNG of each image's size goes to the same relative path with ``.png`` (the model's fixed colour
    range, blended over the image unless ``map_overlay`` is False), where the method produces maps.
    ``on_batch(n_files)`` is called after each batch, for a progress bar.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    maps_dir = Path(maps_dir).resolve() if maps_dir is not None else None
    if maps_dir is not None and maps_dir.is_relative_to(listing.folder):
        raise ValueError(f"the heat-map folder {maps_dir} must be outside the scored folder {listing.folder}")
    summary = summary if summary is not None else ScoreSummary()
    summary.skipped = list(listing.skipped)
    mvtec = listing.layout == "mvtec"
    map_range = model.map_display
    low, high = (map_range["low"], map_range["high"]) if map_range else (None, None)
    tmp = partial_path(out)
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "decision"] + (["split", "label"] if mvtec else []))
        for batch in decoded_batches(listing, batch_size):
            summary.skipped += batch.failed
            if batch.images:
                prediction = model.predict(batch.images, batch_size=batch_size)
                decisions = model.decide(prediction.scores)
                rows = io.StringIO()  # a batch's rows reach the file in one write: whole rows only
                batch_writer = csv.writer(rows)
                for entry, score, bad in zip(batch.entries, prediction.scores, decisions):
                    row = [entry.rel_path, repr(float(score)), "anomalous" if bad else "normal"]
                    batch_writer.writerow(row + ([entry.split, entry.label] if mvtec else []))
                fh.write(rows.getvalue())
                fh.flush()  # an interrupted run keeps every batch scored so far
                summary.scored += len(batch.entries)
                summary.anomalous += int(decisions.sum())
                summary.has_maps = prediction.anomaly_maps is not None
                if maps_dir is not None and prediction.anomaly_maps is not None:
                    for entry, image, amap in zip(batch.entries, batch.images, prediction.anomaly_maps):
                        target = _map_path(maps_dir, entry)
                        rgb = heatmap_rgb(amap, low, high, image if map_overlay else None)
                        Image.fromarray(rgb).save(target)
                        summary.maps_written += 1
            if on_batch is not None:
                on_batch(batch.n_files)
        os.fsync(fh.fileno())
    tmp.replace(out)
    summary.skipped.sort(key=lambda s: s.rel_path)
    return summary


def partial_path(out: Path | str) -> Path:
    """Where ``score_to_csv`` keeps the rows of an unfinished run: ``<out>.part``."""
    out = Path(out)
    return out.with_name(out.name + ".part")


def _map_path(maps_dir: Path, entry: ImageEntry) -> Path:
    """``maps_dir/<rel_path with .png>``; ``a.jpg`` beside an ``a.png`` gets ``a.jpg.png`` instead."""
    rel = PurePosixPath(entry.rel_path)
    if rel.suffix.lower() != ".png" and entry.path.with_suffix(".png").exists():
        rel = rel.with_name(rel.name + ".png")
    else:
        rel = rel.with_suffix(".png")
    target = maps_dir.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(maps_dir):  # rel paths come from our own walk; belt and braces
        raise ValueError(f"refusing to write a heat map outside {maps_dir}: {entry.rel_path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
