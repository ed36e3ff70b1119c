"""Extracting an untrusted zip: nothing written outside the destination, links, special files,
nested and encrypted members left out with a reason, size limits that lying headers cannot pass."""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

from adcore.data.records import SkippedFile, is_hidden


MAX_ZIP_TOTAL_BYTES = 2 * 1024**3  # uncompressed


MAX_ZIP_FILES = 50_000


_COPY_CHUNK = 1024 * 1024


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
    if any(is_hidden(p) for p in parts):
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


def safe_upload_name(name: str) -> str:
    """A relative posix path from an untrusted upload name: no drive, ``..``, control characters."""
    parts = _DRIVE.sub("", name).replace("\\", "/").split("/")
    parts = [_UNSAFE_CHARS.sub("_", p).strip() for p in parts]
    return "/".join(p for p in parts if p not in ("", ".", "..")) or "upload"
