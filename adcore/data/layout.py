"""Finding an image set in a folder or zip: the MVTec AD layout (also below a chain of single
sub-folders) or a plain folder, every image decoded once to validate it; and the public folder
walker (``walk_files``) that other readers of folders (``adcore.batch``) share."""

from __future__ import annotations

import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Iterator

from adcore.data.archives import extract_zip
from adcore.data.decoding import IMAGE_EXTENSIONS, ImageError, load_image
from adcore.data.records import (
    ImageRecord,
    ImageSet,
    NORMAL_LABEL,
    SkippedFile,
    is_hidden,
    sorted_records,
    sorted_skipped,
)


MVTEC_SPLITS = ("train", "test")


MASK_FOLDER = "ground_truth"


_MASK_SUFFIX = "_mask"


_WORKERS = min(4, os.cpu_count() or 1)


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
    image_set.skipped = sorted_skipped(zip_skipped + image_set.skipped)
    return image_set


def _open_folder(folder: Path) -> ImageSet:
    folder = folder.resolve()
    root, skipped = find_mvtec_root(folder)
    if root is None:
        return _scan_plain(folder)
    image_set = _scan_mvtec(root)
    image_set.skipped = sorted_skipped(skipped + image_set.skipped)
    return image_set


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not is_hidden(p.name)), key=lambda p: p.name)


def _is_mvtec(folder: Path) -> bool:
    return any((folder / split).is_dir() for split in MVTEC_SPLITS)


def find_mvtec_root(folder: Path) -> tuple[Path | None, list[SkippedFile]]:
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
    return current, [SkippedFile(relative_posix(p, current), reason) for p in beside]


def relative_posix(path: Path, root: Path) -> str:
    return PurePosixPath(os.path.relpath(path, root).replace(os.sep, "/")).as_posix()


def walk_files(folder: Path) -> Iterator[Path]:
    """Visible files under ``folder``, sorted, following folder links but never in a loop."""
    seen = set()
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in sorted(files):
            if not is_hidden(name):
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
    paths = list(walk_files(root))
    records, skipped = [], []
    for path, (size, reason) in zip(paths, _validate(paths)):
        rel = relative_posix(path, root)
        if reason is not None:
            skipped.append(SkippedFile(rel, reason))
        else:
            records.append(ImageRecord(path, rel, "train", NORMAL_LABEL, None, *size))
    return ImageSet(root, "plain", sorted_records(records), sorted_skipped(skipped))


def _scan_mvtec(root: Path) -> ImageSet:
    skipped: list[SkippedFile] = []
    images: list[tuple[Path, str, str]] = []  # path, split, label
    mask_files: list[tuple[Path, str, str]] = []  # path, class, image stem
    for entry in _visible(root):
        files = list(walk_files(entry)) if entry.is_dir() else [entry]
        for path in files:
            rel = relative_posix(path, root)
            parts = PurePosixPath(rel).parts
            if entry.name in MVTEC_SPLITS and entry.is_dir():
                if len(parts) > 2:
                    images.append((path, parts[0], parts[1]))
                elif parts[0] == "train":  # images directly in train/ are normal
                    images.append((path, "train", NORMAL_LABEL))
                else:
                    skipped.append(SkippedFile(rel, "test image not in a class folder"))
            elif entry.name == MASK_FOLDER and entry.is_dir():
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
        rel = relative_posix(path, root)
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
        rel = relative_posix(path, root)
        if key in chosen:
            skipped.append(SkippedFile(rel, f"second mask for the same image as {relative_posix(chosen[key], root)}"))
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
        rel = relative_posix(chosen[key], root)
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
    return ImageSet(root, "mvtec", sorted_records(records), sorted_skipped(skipped))
