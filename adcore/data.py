"""Loading and validating image sets (folders, zips, MVTec AD layout) without trusting any file."""

from __future__ import annotations

import io
import os
import re
import stat
import tempfile
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL import (  # noqa: F401 - registers exactly the decoders _PIL_FORMATS names
    BmpImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused as decompression bombs, never decoded
MIN_IMAGE_SIDE = 16  # smaller images are skipped ("too small")
MAX_ZIP_TOTAL_BYTES = 2 * 1024**3  # uncompressed
MAX_ZIP_FILES = 50_000

# Only the decoders that IMAGE_EXTENSIONS need: a renamed EPS or PSD must not reach a rarely used
# (or, for EPS, external Ghostscript) decoder. "JPEG" also opens camera MPO files.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_NORMAL_LABEL = "good"
_MVTEC_SPLITS = ("train", "test")
_MASK_FOLDER = "ground_truth"
_MASK_SUFFIX = "_mask"
_COPY_CHUNK = 1024 * 1024
_WORKERS = min(4, os.cpu_count() or 1)


class ImageError(ValueError):
    """An image file that cannot be used; str() is the human reason."""


@dataclass(frozen=True)
class ImageRecord:
    """One usable image of a set: where it is, what it is, and its size after EXIF orientation."""

    path: Path  # absolute path of the image on disk
    rel_path: str  # posix path relative to the image set's root, e.g. "test/crack/001.png"
    split: str  # "train" or "test"
    label: str  # "good" or the defect class name
    mask_path: Path | None  # ground-truth mask, if one was found and is readable
    width: int
    height: int

    @property
    def is_normal(self) -> bool:
        return self.label == _NORMAL_LABEL


@dataclass(frozen=True)
class SkippedFile:
    """A file of the set that is not used, and the short human reason why."""

    rel_path: str
    reason: str


@dataclass
class ImageSet:
    """The usable images of a folder (records) and every file left out with its reason (skipped)."""

    root: Path
    layout: str  # "mvtec" or "plain"
    records: list[ImageRecord]
    skipped: list[SkippedFile]

    def select(self, split: str | None = None, normal: bool | None = None) -> list[ImageRecord]:
        return [
            r
            for r in self.records
            if (split is None or r.split == split) and (normal is None or r.is_normal == normal)
        ]

    @property
    def normal_train(self) -> list[ImageRecord]:
        return self.select(split="train", normal=True)

    @property
    def test(self) -> list[ImageRecord]:
        return self.select(split="test")

    @property
    def defect_classes(self) -> list[str]:
        return sorted({r.label for r in self.records if not r.is_normal})

    def summary(self) -> dict:
        """Counts per split and class, masks matched per test class, image size range, n skipped."""
        counts: dict[str, dict[str, int]] = {}
        for split in _ordered({r.split for r in self.records}, first="train"):
            labels = Counter(r.label for r in self.records if r.split == split)
            counts[split] = {label: labels[label] for label in _ordered(labels, first=_NORMAL_LABEL)}
        masks = {}
        for label in _ordered({r.label for r in self.test}, first=_NORMAL_LABEL):
            group = [r for r in self.test if r.label == label]
            matched = sum(r.mask_path is not None for r in group)
            if label != _NORMAL_LABEL or matched:
                masks[label] = {"matched": matched, "images": len(group)}
        sizes = None
        if self.records:
            (common, n_common), = Counter((r.width, r.height) for r in self.records).most_common(1)
            sizes = {
                "min_width": min(r.width for r in self.records),
                "max_width": max(r.width for r in self.records),
                "min_height": min(r.height for r in self.records),
                "max_height": max(r.height for r in self.records),
                "most_common": common,
                "most_common_count": n_common,
                "n_distinct": len({(r.width, r.height) for r in self.records}),
            }
        return {
            "root": str(self.root),
            "layout": self.layout,
            "n_images": len(self.records),
            "n_skipped": len(self.skipped),
            "counts": counts,
            "masks": masks,
            "sizes": sizes,
        }

    def describe(self) -> str:
        """The human report printed by ``check``: counts, masks, sizes, then every skipped file."""
        s = self.summary()
        layout = {
            "mvtec": "MVTec AD (train/good, test/<class>, ground_truth/<class>)",
            "plain": "plain folder (every image is a normal training image)",
        }[self.layout]
        lines = [
            f"Image set: {self.root}",
            f"Layout:    {layout}",
            f"Usable images: {s['n_images']}   skipped files: {s['n_skipped']}",
            "",
        ]
        rows = [("split", "class", "images", "masks")]
        for split, labels in s["counts"].items():
            for label, n in labels.items():
                mask = s["masks"].get(label) if split == "test" else None
                rows.append((split, label, str(n), f"{mask['matched']}/{mask['images']}" if mask else "-"))
        if len(rows) == 1:
            lines.append("No usable images.")
        else:
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                lines.append(
                    f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
                    f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
                )
        if s["sizes"]:
            z = s["sizes"]
            w, h = z["most_common"]
            lines += [
                "",
                f"Image sizes: width {_span(z['min_width'], z['max_width'])} px, "
                f"height {_span(z['min_height'], z['max_height'])} px; "
                f"most common {w}x{h} ({z['most_common_count']} images, {z['n_distinct']} distinct sizes)",
            ]
        lines.append("")
        if self.skipped:
            lines.append(f"Skipped files ({len(self.skipped)}):")
            lines += [f"  {f.rel_path}: {f.reason}" for f in self.skipped]
        else:
            lines.append("Skipped files: none")
        return "\n".join(lines)


def _ordered(names: Iterable[str], first: str) -> list[str]:
    return sorted(names, key=lambda n: (n != first, n))


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


# ---------------------------------------------------------------------------------------------
# Single images


def load_image(path: Path | str) -> np.ndarray:
    """Decode one image file to HWC uint8 RGB with EXIF orientation applied.

    Every mode becomes RGB: alpha is composited on black (a transparent pixel is black), 16-bit
    images are scaled to 8 bit (65535 -> 255). Raises ImageError whose str() is the reason.
    """
    path = Path(path)
    img = _open_checked(path)
    try:
        # Decode everything now so a truncated or corrupt file fails here, not in training.
        # Pillow raises a zoo of exception types on malformed data (OSError, SyntaxError,
        # ValueError, struct.error, IndexError...), so any failure of the decoder is "corrupt".
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # broken EXIF says nothing reliable about orientation: leave as stored
            pass
        return _to_rgb(img)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too large to decode in the available memory") from None
    except Exception as exc:
        raise ImageError(f"truncated or corrupt: {exc}") from None
    finally:
        img.close()


def load_images(records: Iterable[ImageRecord]) -> list[np.ndarray]:
    """Decode each record's image to HWC uint8 RGB, in order (see ``load_image``)."""
    return [load_image(r.path) for r in records]


def load_mask(record: ImageRecord) -> np.ndarray | None:
    """The record's ground-truth mask as HxW bool (True = defect) at the image's size, or None.

    Raises ImageError if the mask can no longer be read or no longer matches the image's size.
    """
    if record.mask_path is None:
        return None
    mask = _mask_from_rgb(load_image(record.mask_path))
    if mask.shape != (record.height, record.width):
        h, w = mask.shape
        raise ImageError(f"mask size {w}x{h} differs from image {record.width}x{record.height}")
    return mask


def _open_checked(path: Path) -> Image.Image:
    """Open the header only, refusing anything too large (before decoding) or too small."""
    try:
        img = Image.open(path, formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global, changeable) limit fired inside open; the Warning arrives here
        # only when warnings are errors. Our stricter limit below applies in every case.
        raise ImageError(f"too large: {exc}") from None
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ImageError(f"truncated or corrupt: {exc}") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageError(f"too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS:,})")
    if min(w, h) < MIN_IMAGE_SIDE:
        img.close()
        raise ImageError(f"too small: {w}x{h} (minimum {MIN_IMAGE_SIDE} px)")
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """HWC uint8 RGB from any Pillow mode."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "I":
        # 32-bit integers: in practice 16-bit data; values outside 0..65535 are stretched.
        values = np.asarray(img, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return _gray_to_rgb(_stretch(values))
        return _gray_to_rgb(_scale_16bit(values))
    if mode == "F":
        # Floats: 0..1 is the usual convention; anything else is stretched to its own range.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if values.size and (values.min() < 0 or values.max() > 1):
            return _gray_to_rgb(_stretch(values))
        return _gray_to_rgb(np.rint(values * 255).astype(np.uint8))
    if "transparency" in img.info and mode in ("1", "L", "P", "RGB"):
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)  # composited on black
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _mask_from_rgb(rgb: np.ndarray) -> np.ndarray:
    # Masks are binary but often saved with JPEG-like noise, so >= 128 is a defect;
    # masks stored as 0/1 (max value 1) count any non-zero pixel.
    gray = rgb.max(axis=2)
    return gray > 0 if gray.max() <= 1 else gray >= 128


# ---------------------------------------------------------------------------------------------
# Folders


def open_image_set(path: Path | str, *, extract_dir: Path | None = None) -> ImageSet:
    """Open a folder or a .zip as an ImageSet, decoding every image once to validate it.

    Layouts: MVTec AD (``train/<class>``, ``test/<class>``, ``ground_truth/<class>/<stem>_mask.png``),
    also when it sits in a chain of single sub-folders (``bottle/train/good``, common in zips);
    anything else is a plain folder whose images (recursively) are all normal training images.
    Hidden files and folders (``.DS_Store``, ``.git``) and ``__MACOSX/`` are ignored silently;
    every other file that is not used is listed in ``skipped`` with its reason.

    A zip is extracted into ``extract_dir`` (its existing contents become part of the set, so
    pass an empty folder) or into a fresh temporary folder that is left for the caller, because
    the records point into it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return _open_folder(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is neither a folder nor a .zip file")
    dest = Path(extract_dir) if extract_dir is not None else Path(tempfile.mkdtemp(prefix="adcore-zip-"))
    zip_skipped = extract_zip(path, dest)
    image_set = _open_folder(dest)
    image_set.skipped = _sorted_skipped(zip_skipped + image_set.skipped)
    return image_set


def _open_folder(folder: Path) -> ImageSet:
    folder = folder.resolve()
    root, skipped = _find_mvtec_root(folder)
    if root is None:
        return _scan_plain(folder)
    image_set = _scan_mvtec(root)
    image_set.skipped = _sorted_skipped(skipped + image_set.skipped)
    return image_set


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not _is_hidden(p.name)), key=lambda p: p.name)


def _is_mvtec(folder: Path) -> bool:
    return any((folder / split).is_dir() for split in _MVTEC_SPLITS)


def _find_mvtec_root(folder: Path) -> tuple[Path | None, list[SkippedFile]]:
    """The MVTec folder at or below ``folder`` through single sub-folders, and files left beside it."""
    current, beside, seen = folder, [], set()
    while not _is_mvtec(current):
        if current.resolve() in seen:  # a folder link that leads back up
            return None, []
        seen.add(current.resolve())
        entries = _visible(current)
        subdirs = [p for p in entries if p.is_dir()]
        mvtec_subdirs = [p.name for p in subdirs if _is_mvtec(p)]
        if len(subdirs) != 1:
            if mvtec_subdirs:
                # Treating these as a plain folder would call their defect images normal.
                raise ValueError(
                    f"{current} holds MVTec-style image sets in {', '.join(mvtec_subdirs)} "
                    f"next to other folders; open one of them directly"
                )
            return None, []
        beside += [p for p in entries if not p.is_dir()]
        current = subdirs[0]
    reason = f"outside the image set folder {current.relative_to(folder).as_posix()}/"
    return current, [SkippedFile(_rel(p, current), reason) for p in beside]


def _rel(path: Path, root: Path) -> str:
    return PurePosixPath(os.path.relpath(path, root).replace(os.sep, "/")).as_posix()


def _walk_files(folder: Path) -> Iterator[Path]:
    """Visible files under ``folder``, sorted, following folder links but never in a loop."""
    seen = set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if not _is_hidden(name):
                yield Path(here, name)


def _validate(paths: list[Path]) -> list[tuple[tuple[int, int] | None, str | None]]:
    """(width, height) or the reason it is unusable, for each path, by decoding it fully."""

    def check(path: Path) -> tuple[tuple[int, int] | None, str | None]:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            return None, "not an image"
        try:
            h, w = load_image(path).shape[:2]
        except ImageError as exc:
            return None, str(exc)
        return (w, h), None

    if len(paths) < 2 or _WORKERS == 1:
        return [check(p) for p in paths]
    with ThreadPoolExecutor(_WORKERS) as pool:  # Pillow releases the GIL while decoding
        return list(pool.map(check, paths))


def _scan_plain(root: Path) -> ImageSet:
    paths = list(_walk_files(root))
    records, skipped = [], []
    for path, (size, reason) in zip(paths, _validate(paths)):
        rel = _rel(path, root)
        if reason is not None:
            skipped.append(SkippedFile(rel, reason))
        else:
            records.append(ImageRecord(path, rel, "train", _NORMAL_LABEL, None, *size))
    return ImageSet(root, "plain", _sorted_records(records), _sorted_skipped(skipped))


def _scan_mvtec(root: Path) -> ImageSet:
    skipped: list[SkippedFile] = []
    images: list[tuple[Path, str, str]] = []  # path, split, label
    mask_files: list[tuple[Path, str, str]] = []  # path, class, image stem
    for entry in _visible(root):
        files = list(_walk_files(entry)) if entry.is_dir() else [entry]
        for path in files:
            rel = _rel(path, root)
            parts = PurePosixPath(rel).parts
            if entry.name in _MVTEC_SPLITS and entry.is_dir():
                if len(parts) > 2:
                    images.append((path, parts[0], parts[1]))
                elif parts[0] == "train":  # images directly in train/ are normal
                    images.append((path, "train", _NORMAL_LABEL))
                else:
                    skipped.append(SkippedFile(rel, "test image not in a class folder"))
            elif entry.name == _MASK_FOLDER and entry.is_dir():
                if len(parts) > 2:
                    mask_files.append((path, parts[1], path.stem.removesuffix(_MASK_SUFFIX)))
                else:
                    skipped.append(SkippedFile(rel, "mask not in a class folder"))
            elif path.suffix.lower() in IMAGE_EXTENSIONS or entry.is_dir():
                skipped.append(SkippedFile(rel, "outside train/, test/ and ground_truth/"))
            # Other files at the top (readme, licence, a generator script) are documentation, not data.

    image_checks = _validate([p for p, _, _ in images])
    test_index: dict[tuple[str, str], int] = {}  # (label, stem) -> position in records
    failed_keys = set()
    records: list[ImageRecord] = []
    for (path, split, label), (size, reason) in zip(images, image_checks):
        rel = _rel(path, root)
        if reason is not None:
            skipped.append(SkippedFile(rel, reason))
            if split == "test":
                failed_keys.add((label, path.stem))
            continue
        if split == "test":
            test_index[(label, path.stem)] = len(records)
        records.append(ImageRecord(path, rel, split, label, None, *size))

    # A "<stem>_mask" file wins over a bare "<stem>" one for the same image.
    mask_files.sort(key=lambda m: (m[1], m[2], not m[0].stem.endswith(_MASK_SUFFIX), m[0].name))
    chosen: dict[tuple[str, str], Path] = {}
    for path, label, stem in mask_files:
        key = (label, stem)
        rel = _rel(path, root)
        if key in chosen:
            skipped.append(SkippedFile(rel, f"second mask for the same image as {_rel(chosen[key], root)}"))
        elif key in test_index:
            chosen[key] = path
        elif key in failed_keys:
            skipped.append(SkippedFile(rel, "mask of a skipped image"))
        else:
            skipped.append(SkippedFile(rel, "mask without a matching test image"))

    keys = list(chosen)
    mask_checks = _validate([chosen[k] for k in keys])
    for key, (size, reason) in zip(keys, mask_checks):
        record = records[test_index[key]]
        rel = _rel(chosen[key], root)
        if reason is not None:
            skipped.append(SkippedFile(rel, f"unreadable mask: {reason}"))
        elif size != (record.width, record.height):
            skipped.append(
                SkippedFile(
                    rel,
                    f"mask size {size[0]}x{size[1]} differs from image {record.width}x{record.height}",
                )
            )
        else:
            records[test_index[key]] = replace(record, mask_path=chosen[key])
    return ImageSet(root, "mvtec", _sorted_records(records), _sorted_skipped(skipped))


def _sorted_records(records: list[ImageRecord]) -> list[ImageRecord]:
    return sorted(records, key=lambda r: (r.split != "train", r.rel_path))


def _sorted_skipped(skipped: list[SkippedFile]) -> list[SkippedFile]:
    return sorted(skipped, key=lambda s: s.rel_path)


# ---------------------------------------------------------------------------------------------
# Zips and uploads

_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')


def extract_zip(
    zip_path: Path | str | BinaryIO,
    dest: Path,
    *,
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
    max_files: int = MAX_ZIP_FILES,
) -> list[SkippedFile]:
    """Extract a zip (path or binary file object) into ``dest``; return the members left out.

    Members that would land outside ``dest`` (absolute paths, ``..``, drive letters), symlinks
    and other special entries, encrypted members, nested zips and duplicate names are skipped
    with a reason; nothing is ever written outside ``dest`` and no existing file is overwritten.
    A zip whose headers declare more than ``max_files`` files or ``max_total_bytes``
    uncompressed, or whose data turns out larger than that while extracting (headers can lie),
    raises ValueError("zip refused: ...") and the files this call wrote are removed.
    """
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"zip refused: not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise ValueError(f"zip refused: {len(members):,} files exceeds the limit of {max_files:,}")
        declared = sum(m.file_size for m in members)
        if declared > max_total_bytes:
            raise ValueError(
                f"zip refused: uncompressed size {declared:,} bytes exceeds the limit of {max_total_bytes:,}"
            )
        dest.mkdir(parents=True, exist_ok=True)
        real_dest = dest.resolve()
        skipped: list[SkippedFile] = []
        written: list[Path] = []
        remaining = max_total_bytes
        try:
            for member in members:
                reason, size = _extract_member(archive, member, real_dest, remaining, written)
                remaining -= size
                if reason:
                    skipped.append(SkippedFile(member.filename, reason))
        except _OverLimit:
            for path in written:
                path.unlink(missing_ok=True)
            raise ValueError(
                f"zip refused: uncompressed data exceeds the limit of {max_total_bytes:,} bytes "
                "(its headers understate the sizes)"
            ) from None
    return skipped


class _OverLimit(Exception):
    """Raised while extracting when the bytes actually written pass the zip size limit."""


def _extract_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path, remaining: int, written: list[Path]
) -> tuple[str | None, int]:
    """Write one member under ``dest``: (reason it was skipped or None, bytes written).

    Hidden members are skipped silently (reason None, nothing written).
    """
    name = member.filename
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or not parts:
        return "unsafe path in zip", 0
    if any(_is_hidden(p) for p in parts):
        return None, 0
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "symlink in zip", 0
    if kind not in (0, stat.S_IFREG):
        return "not a regular file in zip", 0
    if member.flag_bits & 0x1:
        return "encrypted in zip", 0
    if parts[-1].lower().endswith(".zip"):
        return "nested zip not extracted", 0
    target = dest.joinpath(*parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Defence in depth: a folder link already inside dest must not lead the write outside.
        if not target.parent.resolve().is_relative_to(dest):
            return "unsafe path in zip", 0
        out = open(target, "xb")  # never overwrite, never follow a link at the target
    except FileExistsError:
        return "duplicate name", 0
    except OSError as exc:
        return f"cannot write: {exc.strerror or exc}", 0
    written.append(target)
    size = 0
    try:
        with out, archive.open(member) as src:
            while chunk := src.read(_COPY_CHUNK):
                size += len(chunk)
                if size > remaining:
                    raise _OverLimit
                out.write(chunk)
    except _OverLimit:
        raise
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
        target.unlink(missing_ok=True)
        written.remove(target)
        return f"corrupt zip member: {exc}", 0
    return None, size


def save_uploads(files: Iterable[tuple[str, bytes]], dest: Path) -> ImageSet:
    """Write uploaded ``(name, bytes)`` pairs under ``dest`` and open it as an ImageSet.

    Names are sanitised (no drive, no ``..``, control and reserved characters become ``_``; a
    clash gets a numbered name); hidden names are not written but listed. A zip among them is
    extracted into ``dest``; its left-out members are listed as ``<zip name>/<member>``, and a
    refused zip is listed with the reason.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    skipped: list[SkippedFile] = []
    for name, data in files:
        safe = _safe_upload_name(name)
        if any(_is_hidden(part) for part in safe.split("/")):
            skipped.append(SkippedFile(safe, "hidden file ignored"))
            continue
        if safe.lower().endswith(".zip") or data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            try:
                members = extract_zip(io.BytesIO(data), dest)
            except ValueError as exc:
                skipped.append(SkippedFile(safe, str(exc)))
                continue
            skipped += [SkippedFile(f"{safe}/{s.rel_path}", s.reason) for s in members]
            continue
        try:
            target = _unused_path(dest / safe)
            # Defence in depth, as for zips: a link inside dest must not lead the write outside.
            if not target.resolve().is_relative_to(dest.resolve()):
                skipped.append(SkippedFile(safe, "unsafe file name"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                out.write(data)
        except OSError as exc:
            skipped.append(SkippedFile(safe, f"cannot write: {exc.strerror or exc}"))
    image_set = open_image_set(dest)
    image_set.skipped = _sorted_skipped(skipped + image_set.skipped)
    return image_set


# --- which server folders a visitor may open --------------------------------------------------

DATA_ROOTS_ENV = "ADCORE_DATA_ROOTS"


def allowed_data_roots(defaults: Iterable[Path | str]) -> list[Path]:
    """The folders under which a path typed by a visitor may be opened: those in
    ``$ADCORE_DATA_ROOTS`` (separated by ``os.pathsep``) if it is set, else ``defaults``; each with
    ``~``, ``..`` and symlinks resolved."""
    configured = os.environ.get(DATA_ROOTS_ENV)
    roots = [r for r in configured.split(os.pathsep) if r.strip()] if configured is not None else list(defaults)
    return list(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))


def allowed_path(path: Path | str, roots: Iterable[Path]) -> Path:
    """``path`` with ``~``, ``..`` and symlinks resolved, if it is one of ``roots`` or lies below one
    of them; else a ValueError that names the allowed folders (and says nothing about ``path``'s
    contents, not even whether it exists)."""
    roots = [Path(r).expanduser().resolve() for r in roots]
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    allowed = ", ".join(str(r) for r in roots) or "none"
    raise ValueError(
        f"{path} is outside the folders this server opens ({allowed}); the server's administrator "
        f"can allow more with the {DATA_ROOTS_ENV} environment variable"
    )


def _safe_upload_name(name: str) -> str:
    """A relative posix path from an untrusted upload name: no drive, ``..``, control characters."""
    parts = _DRIVE.sub("", name).replace("\\", "/").split("/")
    parts = [_UNSAFE_CHARS.sub("_", p).strip() for p in parts]
    return "/".join(p for p in parts if p not in ("", ".", "..")) or "upload"


def _unused_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate
