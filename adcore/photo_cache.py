"""Photos decoded once into an on-disk cache that a training run reads lazily, batch by batch.

Holding every normal photo of a set in memory at full resolution costs 15 MB per 5-MP photo before a
method has done anything, so training 400 of them does not fit in an ordinary machine's memory. A run
instead decodes each photo once (a small pool of threads: Pillow releases the GIL while decoding and
resizing), shrinks it to at most ``MAX_SIDE`` pixels on its longer side (its width:height kept; smaller
photos are kept exactly as they are) and saves it as an uncompressed ``.npy`` file in a temporary
folder (named with the process id, so that a folder left by a killed run is removed by the next one). ``CachedImages`` is a ``Sequence`` of those files: indexing one opens it memory-mapped
(copy-on-write, so a method that changes its input in place changes only its own copy), slicing or
``take`` gives another lazy sequence, and only the photos a method is working on at the moment are in
memory. The folder is removed when the cache is closed.

``PhotoCache(in_memory=True)`` keeps the decoded photos in a list at full resolution instead: the
behaviour of training before the cache existed, kept for comparison (and for tests that check that
both give the same scores).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, overload

import numpy as np
from PIL import Image

from adcore.data import ImageError, ImageRecord, load_image

MAX_SIDE = 1024  # longer side (pixels) a photo is kept at: about 1 MP, whatever the camera
WORKERS = max(1, min(4, os.cpu_count() or 1))


def cached_shape(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The (H, W) a ``height`` x ``width`` photo is kept at: shrunk to ``max_side`` on its longer side."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` (HWC uint8) at most ``max_side`` on its longer side (bilinear, antialiased), or itself."""
    h, w = cached_shape(*image.shape[:2], max_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


class CachedImages(Sequence[np.ndarray]):
    """A lazy sequence of HWC uint8 photos saved as ``.npy`` files (see the module's description)."""

    def __init__(self, files: Sequence[Path], shapes: Sequence[tuple[int, int, int]]) -> None:
        self.files = list(files)
        self.shapes = [tuple(s) for s in shapes]

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> "CachedImages": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        return np.load(self.files[index], mmap_mode="c")

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def take(self, indices: Iterable[int]) -> "CachedImages":
        indices = [int(i) for i in indices]
        return CachedImages([self.files[i] for i in indices], [self.shapes[i] for i in indices])

    def __add__(self, other: "CachedImages") -> "CachedImages":
        return CachedImages(self.files + other.files, self.shapes + other.shapes)


THUMBNAIL_SIDE = 160  # longer side of the thumbnails a run stores (the pages' galleries show them at this size)


def thumbnail_stack(images: Iterable[np.ndarray], side: int = THUMBNAIL_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails of ``images`` (HWC uint8) in one array, for a run to store: (N, side, side, 3) uint8,
    each scaled (bilinear) so its longer side is ``side`` and put top-left, zeros elsewhere, and
    (N, 2) the (height, width) of each. ``stacked_thumbnail`` gives one back."""
    stack, shapes = [], []
    for image in images:
        h, w = image.shape[:2]
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("RGB").resize(size, Image.BILINEAR))
        tile = np.zeros((side, side, 3), np.uint8)
        tile[: small.shape[0], : small.shape[1]] = small
        stack.append(tile)
        shapes.append(small.shape[:2])
    return np.zeros((0, side, side, 3), np.uint8) if not stack else np.stack(stack), np.array(shapes, np.int32).reshape(-1, 2)


def stacked_thumbnail(stack: np.ndarray, shapes: np.ndarray, i: int) -> np.ndarray:
    """Thumbnail ``i`` of a ``thumbnail_stack``, without its padding."""
    h, w = (int(v) for v in shapes[i])
    return stack[i, :h, :w]


class ArrayFile(Sequence[np.ndarray]):
    """Arrays of one dtype appended to one file and read back one at a time with a plain read (not a
    mapping), so an array is in memory only while its reader holds it: for a run's intermediate
    results that would not fit in memory all at once (a search's validation maps). ``drop()``
    deletes the file."""

    def __init__(self, path: Path, dtype=np.float32) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self._index: list[tuple[int, tuple[int, ...]]] = []  # (offset in bytes, shape)
        self._end = 0
        self.path.write_bytes(b"")

    def append(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        with open(self.path, "ab") as f:
            array.tofile(f)
        self._index.append((self._end, array.shape))
        self._end += array.nbytes

    def extend(self, arrays: Iterable[np.ndarray]) -> "ArrayFile":
        for a in arrays:
            self.append(a)
        return self

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):  # type: ignore[override]
        offset, shape = self._index[i]
        count = int(np.prod(shape, dtype=np.int64))
        return np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset).reshape(shape)

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)
        self._index = []


def take(images: Sequence[np.ndarray], indices: Iterable[int]) -> Sequence[np.ndarray]:
    """``images[i]`` for each index: still lazy where ``images`` is a ``CachedImages``, else a list."""
    if isinstance(images, CachedImages):
        return images.take(indices)
    return [images[int(i)] for i in indices]


def concat(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """``first`` then ``second``: still lazy where both are ``CachedImages``, else a list."""
    if isinstance(first, CachedImages) and isinstance(second, CachedImages):
        return first + second
    return list(first) + list(second)


def image_shape(images: Sequence[np.ndarray], i: int) -> tuple[int, ...]:
    """The shape of ``images[i]``, without reading its pixels where the sequence knows it (``shapes``)."""
    shapes = getattr(images, "shapes", None)
    return tuple(shapes[i]) if shapes is not None else images[i].shape


def remove_stale_caches(root: Path) -> list[Path]:
    """Remove the cache folders under ``root`` left by runs whose process was killed (a killed process
    cannot clean up after itself); returns them."""
    removed = []
    for folder in root.glob("adcore-photos-*-*"):
        pid = folder.name.split("-")[2]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class PhotoCache:
    """Decoded photos of one training run: on disk under a temporary folder, or (``in_memory``) in a list.

    Use as a context manager, or call ``close()``: the folder and everything in it is removed.
    """

    def __init__(self, *, in_memory: bool = False, max_side: int | None = MAX_SIDE, root: Path | str | None = None,
                 workers: int = WORKERS) -> None:
        self.in_memory = in_memory
        self.max_side = None if in_memory else max_side
        self.workers = workers
        if not in_memory:
            remove_stale_caches(Path(root or tempfile.gettempdir()))
        # The process id in the name tells a later run whether the folder's owner is still alive.
        self.folder = None if in_memory else Path(tempfile.mkdtemp(prefix=f"adcore-photos-{os.getpid()}-", dir=root))
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "PhotoCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _next_file(self) -> Path:
        with self._lock:
            self._count += 1
            return self.folder / f"{self._count:07d}.npy"

    def _store(self, image: np.ndarray) -> tuple[Path, tuple[int, int, int]]:
        image = np.ascontiguousarray(shrink(image, self.max_side), dtype=np.uint8)
        path = self._next_file()
        np.save(path, image)
        return path, image.shape

    def arrays(self, arrays: Iterable[np.ndarray], dtype=np.float32) -> Sequence[np.ndarray]:
        """Keep intermediate arrays of the run (e.g. maps) like photos: in one file of the cache folder,
        read back one at a time (``ArrayFile``); a list with ``in_memory``."""
        if self.in_memory:
            return [np.asarray(a, dtype) for a in arrays]
        with self._lock:
            self._count += 1
            path = self.folder / f"{self._count:07d}.f{np.dtype(dtype).itemsize * 8}"
        return ArrayFile(path, dtype).extend(arrays)

    def load(
        self,
        records: Sequence[ImageRecord],
        skipped: list[dict],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[list[ImageRecord], Sequence[np.ndarray]]:
        """Decode ``records``' photos (in a pool of threads), keep them, and return the records that
        could be read with their photos, in order. Unreadable ones are added to ``skipped``.
        ``on_progress(done, total)`` is called after each photo (it may raise, e.g. to cancel); once
        ``stop`` is set no further photo is decoded and ``on_progress`` is called at once."""

        def decode(rec: ImageRecord):
            if stop is not None and stop.is_set():
                return None
            try:
                image = load_image(rec.path)
            except ImageError as exc:
                return exc
            return image if self.in_memory else self._store(image)

        kept, images, files, shapes = [], [], [], []
        total = len(records)
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            # A bounded window of photos in flight, so a fast decoder never runs far ahead of the disk.
            window = max(1, self.workers) * 2
            futures = [pool.submit(decode, rec) for rec in records[:window]]
            for i, rec in enumerate(records):
                result = futures[i].result()
                if i + window < total:
                    futures.append(pool.submit(decode, records[i + window]))
                futures[i] = None
                if result is None:  # stopped: let on_progress raise, or end here
                    if on_progress is not None:
                        on_progress(i + 1, total)
                    break
                if isinstance(result, ImageError):
                    skipped.append({"rel_path": rec.rel_path, "reason": str(result)})
                elif self.in_memory:
                    kept.append(rec)
                    images.append(result)
                else:
                    kept.append(rec)
                    files.append(result[0])
                    shapes.append(result[1])
                if on_progress is not None:
                    on_progress(i + 1, total)
        return kept, (images if self.in_memory else CachedImages(files, shapes))

    def keep(self, images: Iterable[np.ndarray]) -> Sequence[np.ndarray]:
        """Keep photos made during the run (e.g. synthetic defects) like decoded ones; returns them."""
        if self.in_memory:
            return list(images)
        files, shapes = [], []
        for image in images:
            path, shape = self._store(image)
            files.append(path)
            shapes.append(shape)
        return CachedImages(files, shapes)


class TiledImages(Sequence[np.ndarray]):
    """The overlapping tiles (``adcore.tiling.tile_boxes``) of each photo of ``images``, in order, cut
    only when indexed: a method can go through a set's tiles batch by batch without holding them all."""

    def __init__(self, images: Sequence[np.ndarray], tile: int, overlap: float) -> None:
        from adcore.tiling import tile_boxes

        self.images = images
        self.index = [(i, box) for i in range(len(images))
                      for box in tile_boxes(*image_shape(images, i)[:2], tile, overlap)]
        self.shapes = [(b - t, r - l, 3) for _, (t, l, b, r) in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(len(self))[k]]
        i, (top, left, bottom, right) = self.index[k]
        return np.ascontiguousarray(self.images[i][top:bottom, left:right])

    def subset(self, keep: Sequence[int]) -> "TiledImages":
        """The tiles numbered ``keep`` only (still cut when indexed), in that order."""
        out = object.__new__(TiledImages)
        out.images = self.images
        out.index = [self.index[k] for k in keep]
        out.shapes = [self.shapes[k] for k in keep]
        return out


def predict_at_side(predict: Callable[[Sequence[np.ndarray]], Any], images: Sequence[np.ndarray],
                    max_side: int | None) -> Any:
    """``predict(images)`` with each photo first shrunk as training kept them (``shrink``), and the
    prediction's maps and reconstructions brought back to each photo's own size: a model trained on the
    photo cache sees new photos at the scale it learnt (which matters for tiles of fixed pixel size).
    Photos at most ``max_side`` (and ``max_side`` None: runs before the cache) pass as they are."""
    if max_side is None or all(max(im.shape[:2]) <= max_side for im in images):
        return predict(images)
    prediction = predict([shrink(im, max_side) for im in images])
    sizes = [im.shape[:2] for im in images]
    if prediction.anomaly_maps is not None:
        prediction.anomaly_maps = [
            m if m.shape == size else np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(
                (size[1], size[0]), Image.BILINEAR), dtype=np.float32)
            for m, size in zip(prediction.anomaly_maps, sizes)
        ]
    if prediction.reconstructions is not None:
        prediction.reconstructions = [
            r if r.shape[:2] == size else np.asarray(Image.fromarray(r).resize((size[1], size[0]), Image.BILINEAR))
            for r, size in zip(prediction.reconstructions, sizes)
        ]
    return prediction
