"""Batch scoring of folders or zips of any size: list files without decoding, decode per batch, stream out.

``adcore.data.open_image_set`` decodes every image up front to validate a training set; scoring a
large folder instead walks it lazily (``list_images``), decodes one batch at a time with
``adcore.data.load_image`` (the next batch is decoded while the current one is scored), and writes
each batch's CSV rows and heat maps before the next, so memory does not grow with the folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image

from adcore.data import IMAGE_EXTENSIONS, ImageError, SkippedFile, extract_zip, load_image
from adcore.data.layout import MASK_FOLDER, MVTEC_SPLITS, find_mvtec_root, relative_posix, walk_files

if TYPE_CHECKING:  # torch-free at run time: the ONNX scorer (adcore.onnx_model.OnnxModel) scores through here too
    from adcore.loaded_model import LoadedModel

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
    digest: str = ""  # SHA-256 of the images' relative paths in order: the same files in the same order
    list_file: Path | None = None  # a text file of image paths (``list_paths``) instead of a folder walk

    def __iter__(self) -> Iterator[ImageEntry]:
        for item in self._walk():
            if isinstance(item, ImageEntry):
                yield item

    def _walk(self) -> Iterator[ImageEntry | SkippedFile]:
        if self.list_file is not None:
            yield from _listed(self.list_file)
            return
        for path in walk_files(self.folder):
            rel = relative_posix(path, self.folder)
            split = label = ""
            if self.mvtec_root is not None:
                parts = PurePosixPath(relative_posix(path, self.mvtec_root)).parts
                if parts[0] == MASK_FOLDER:  # masks of an MVTec layout are not inputs
                    continue
                if parts[0] in MVTEC_SPLITS and len(parts) > 1:
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
    mvtec_root, _ = find_mvtec_root(folder)
    return _counted(ImageListing(folder, "plain" if mvtec_root is None else "mvtec", mvtec_root))


def list_paths(list_file: Path | str) -> ImageListing:
    """The images named in a text file, one path a line, in its order (blank lines and ``#`` comments
    left out). A relative path is read from the list's folder; each row's ``path`` is the line as
    written. Missing files and files that are not images are listed in ``skipped``."""
    list_file = Path(list_file).resolve()
    return _counted(ImageListing(list_file.parent, "plain", None, list_file=list_file))


def _listed(list_file: Path) -> Iterator[ImageEntry | SkippedFile]:
    with list_file.open(encoding="utf-8") as fh:
        for line in fh:
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            path = list_file.parent / name  # an absolute name stays as it is
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                yield SkippedFile(name, "not an image")
            elif not path.is_file():
                yield SkippedFile(name, "no such file")
            else:
                yield ImageEntry(path, name)


def _counted(listing: ImageListing) -> ImageListing:
    """``listing`` with its count, skipped files and digest from one walk."""
    paths = hashlib.sha256()
    for item in listing._walk():
        if isinstance(item, SkippedFile):
            listing.skipped.append(item)
        else:
            listing.count += 1
            paths.update(item.rel_path.encode("utf-8") + b"\0")
    listing.digest = paths.hexdigest()
    return listing


@contextlib.contextmanager
def open_images(path: Path | str) -> Iterator[ImageListing]:
    """``list_images`` for a folder, ``list_paths`` for a ``.txt`` list of image paths, or
    ``list_images`` for a zip extracted into a temporary folder removed on exit.

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
        if path.suffix.lower() == ".txt":
            yield list_paths(path)
            return
        raise ValueError(f"{path} is neither a folder, a .zip file nor a .txt list of image paths")
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
    source = entry_batches(entries, batch_size)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding

        def submit() -> list:
            return [(e, pool.submit(_decode, e.path)) for e in next(source, [])]

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


def entry_batches(entries: Iterator[ImageEntry] | ImageListing, batch_size: int) -> Iterator[list[ImageEntry]]:
    """``entries`` in consecutive lists of ``batch_size`` (the last may be shorter): the batches every
    engine scores, so batch ``i`` holds the same files whichever engine scores it."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    source = iter(entries)
    while batch := list(islice(source, batch_size)):
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
    resumed: int = 0  # images whose rows an earlier, interrupted run had already written


@dataclass
class ScoredBatch:
    """One batch scored: its CSV rows (exact text), counts, and the files that did not decode."""

    csv_text: str
    n_files: int
    scored: int
    anomalous: int
    maps_written: int
    has_maps: bool | None
    failed: list[SkippedFile]

    def to_dict(self) -> dict:
        """Plain JSON values (for the resume log, and to send between processes)."""
        fields = {k: v for k, v in vars(self).items() if k != "failed"}
        return {**fields, "failed": [[f.rel_path, f.reason] for f in self.failed]}

    @classmethod
    def from_dict(cls, fields: dict) -> ScoredBatch:
        failed = [SkippedFile(rel, reason) for rel, reason in fields["failed"]]
        return cls(**{**fields, "failed": failed})


class BatchScorer:
    """Scores one decoded batch into CSV rows and heat-map PNGs: the same work in every engine.

    Rows: ``path`` (relative to the scored folder), ``score`` (full precision), ``decision``
    (``anomalous``/``normal`` at the model's threshold), plus ``split`` and ``label`` in an MVTec
    layout. With ``maps_dir``, a heat-map PNG of each image's size goes to the same relative path with
    ``.png`` (the model's fixed colour range, blended over the image unless ``map_overlay`` is False).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        mvtec: bool,
        batch_size: int = 32,
        maps_dir: Path | None = None,
        map_overlay: bool = True,
    ) -> None:
        self.model, self.mvtec, self.batch_size = model, mvtec, batch_size
        self.maps_dir, self.map_overlay = maps_dir, map_overlay
        map_range = model.map_display
        self.low, self.high = (map_range["low"], map_range["high"]) if map_range else (None, None)

    def __call__(self, batch: DecodedBatch) -> ScoredBatch:
        """The batch's rows, in the order of its entries; ``batch.images`` are HWC uint8 RGB."""
        result = ScoredBatch("", batch.n_files, 0, 0, 0, None, list(batch.failed))
        if not batch.images:
            return result
        prediction = self.model.predict(batch.images, batch_size=self.batch_size)
        decisions = self.model.decide(prediction.scores)
        rows = io.StringIO()
        writer = csv.writer(rows)
        for entry, score, bad in zip(batch.entries, prediction.scores, decisions):
            row = [entry.rel_path, repr(float(score)), "anomalous" if bad else "normal"]
            writer.writerow(row + ([entry.split, entry.label] if self.mvtec else []))
        result.csv_text = rows.getvalue()
        result.scored, result.anomalous = len(batch.entries), int(decisions.sum())
        result.has_maps = prediction.anomaly_maps is not None
        if self.maps_dir is not None and prediction.anomaly_maps is not None:
            for entry, image, amap in zip(batch.entries, batch.images, prediction.anomaly_maps):
                rgb = heatmap_rgb(amap, self.low, self.high, image if self.map_overlay else None)
                Image.fromarray(rgb).save(_map_path(self.maps_dir, entry))
                result.maps_written += 1
        return result


def csv_header(mvtec: bool) -> list[str]:
    """The columns of a scores CSV."""
    return ["path", "score", "decision"] + (["split", "label"] if mvtec else [])


class PartialCsv:
    """``<out>.part`` written batch by batch, with a log (``<out>.part.log``) that makes it resumable.

    After each batch's rows reach ``.part`` (one write, flushed), one JSON line in the log records the
    batch number, the byte length of ``.part`` so far, and the batch's counts and unreadable files.
    Opened again for the same job (the log's first line: a digest of the files in order, the batch size,
    the model and the heat-map options), it cuts ``.part`` back to the last logged batch (rows written
    after it, by a job killed before logging them, are dropped and scored again) and carries on from the
    next one: no row is lost or written twice. Batches are appended in order (``next_batch``).
    """

    def __init__(self, out: Path, job: dict, summary: ScoreSummary, header: list[str]) -> None:
        self.out, self.summary = out, summary
        self.part, self.log_path = partial_path(out), partial_path(out).with_name(partial_path(out).name + ".log")
        self.next_batch = 0
        job_line = json.dumps(job, sort_keys=True)
        done = self._logged_batches(job_line)
        if done:
            end = done[-1]["end"]
            with self.part.open("r+b") as fh:
                fh.truncate(end)
            with self.log_path.open("r+b") as fh:
                fh.truncate(sum(len(line) for line in self._log_lines()[: len(done) + 1]))
            for entry in done:
                self._count(ScoredBatch.from_dict(entry["scored"]))
            summary.resumed = summary.scored
        else:
            self.part.write_bytes(_csv_bytes(header))
            self.log_path.write_text(job_line + "\n")
        self.next_batch = len(done)
        self._rows, self._log = self.part.open("ab"), self.log_path.open("a")

    def _log_lines(self) -> list[bytes]:
        return self.log_path.read_bytes().splitlines(keepends=True)

    def _logged_batches(self, job_line: str) -> list[dict]:
        """The complete batches an earlier run of this same job logged, in order; [] to start over."""
        if not (self.part.is_file() and self.log_path.is_file()):
            return []
        lines = self._log_lines()
        if not lines or lines[0].decode("utf-8", "replace").rstrip("\n") != job_line:
            return []  # another job's leftovers (other files, batch size or model): start over
        done = []
        for line in lines[1:]:
            try:
                entry = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or entry.get("batch") != len(done):
                break  # a line cut short by a kill: that batch is scored again
            done.append(entry)
        if done and self.part.stat().st_size < done[-1]["end"]:
            return []  # .part shorter than its log says: not ours to trust
        return done

    def _count(self, result: ScoredBatch) -> None:
        summary = self.summary
        summary.scored += result.scored
        summary.anomalous += result.anomalous
        summary.maps_written += result.maps_written
        summary.skipped += result.failed
        if result.has_maps is not None:
            summary.has_maps = result.has_maps

    def append(self, result: ScoredBatch) -> None:
        """Write batch ``next_batch``'s rows, then log it."""
        self._rows.write(result.csv_text.encode("utf-8"))  # a batch's rows reach the file in one write
        self._rows.flush()
        entry = {"batch": self.next_batch, "end": self._rows.tell(), "scored": result.to_dict()}
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()
        self.next_batch += 1
        self._count(result)

    def finish(self) -> None:
        """All batches written: ``.part`` becomes ``out`` and the log goes."""
        self.close(sync=True)
        self.part.replace(self.out)
        self.log_path.unlink()

    def close(self, sync: bool = False) -> None:
        for fh in (self._rows, self._log):
            if sync and not fh.closed:
                fh.flush()
                os.fsync(fh.fileno())
            fh.close()


def _csv_bytes(row: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerow(row)
    return text.getvalue().encode("utf-8")


@contextlib.contextmanager
def resumable_csv(
    model: LoadedModel,
    listing: ImageListing,
    out: Path | str,
    *,
    batch_size: int,
    maps_dir: Path | str | None,
    map_overlay: bool,
    on_batch: Callable[[int], None] | None,
    summary: ScoreSummary,
) -> Iterator[tuple[PartialCsv, BatchScorer]]:
    """A scoring job for any engine: its resumable ``.part`` and the scorer of its batches.

    The engine appends the batches from ``part.next_batch`` on; ``summary`` gets the listing's skipped
    files and what an earlier, interrupted run of the same job already scored (``on_batch`` is told
    once). On leaving, ``.part`` becomes ``out``, or, on an exception, stays to be resumed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    maps_dir = Path(maps_dir).resolve() if maps_dir is not None else None
    if maps_dir is not None and listing.list_file is None and maps_dir.is_relative_to(listing.folder):
        raise ValueError(f"the heat-map folder {maps_dir} must be outside the scored folder {listing.folder}")
    mvtec = listing.layout == "mvtec"
    summary.skipped = list(listing.skipped)
    job = {
        "images": listing.digest,
        "count": listing.count,
        "batch_size": batch_size,
        "model": str(Path(model.path).resolve()),
        "method": model.config.get("method"),
        "threshold": model.threshold.value,
        "maps": None if maps_dir is None else [str(maps_dir), map_overlay],
    }
    part = PartialCsv(out, job, summary, csv_header(mvtec))
    scorer = BatchScorer(model, mvtec=mvtec, batch_size=batch_size, maps_dir=maps_dir, map_overlay=map_overlay)
    try:
        if part.next_batch and on_batch is not None:
            on_batch(min(part.next_batch * batch_size, listing.count))
        yield part, scorer
    except BaseException:
        part.close()
        raise
    part.finish()
    summary.skipped.sort(key=lambda s: s.rel_path)


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

    Columns and heat maps: ``BatchScorer``. Rows are written batch by batch to ``<out>.part``
    (``partial_path``), which becomes ``out`` at the end; if scoring is interrupted or fails, the
    ``.part`` file keeps every row scored so far (``summary``, when given, is filled in as it goes, to
    say how many), and the same job started again goes on from there (``PartialCsv``).
    ``on_batch(n_files)`` is called after each batch (and once for what was resumed), for a progress bar.
    """
    summary = summary if summary is not None else ScoreSummary()
    options = dict(batch_size=batch_size, maps_dir=maps_dir, map_overlay=map_overlay, on_batch=on_batch)
    with resumable_csv(model, listing, out, summary=summary, **options) as (part, scorer):
        for batch in decoded_batches(islice(iter(listing), part.next_batch * batch_size, None), batch_size):
            part.append(scorer(batch))
            if on_batch is not None:
                on_batch(batch.n_files)
    return summary


def partial_path(out: Path | str) -> Path:
    """Where ``score_to_csv`` keeps the rows of an unfinished run: ``<out>.part``."""
    out = Path(out)
    return out.with_name(out.name + ".part")


def _map_path(maps_dir: Path, entry: ImageEntry) -> Path:
    """``maps_dir/<rel_path with .png>``; ``a.jpg`` beside an ``a.png`` gets ``a.jpg.png`` instead."""
    rel = PurePosixPath(entry.rel_path)
    rel = rel.relative_to(rel.anchor) if rel.anchor else rel  # an absolute path of a list: below maps_dir
    if rel.suffix.lower() != ".png" and entry.path.with_suffix(".png").exists():
        rel = rel.with_name(rel.name + ".png")
    else:
        rel = rel.with_suffix(".png")
    target = maps_dir.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(maps_dir):  # rel paths come from our own walk; belt and braces
        raise ValueError(f"refusing to write a heat map outside {maps_dir}: {entry.rel_path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
