"""What visitors bring and may open: uploaded files saved under safe names (zips extracted), and
the server folders a typed path may lie in."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

from adcore.data.archives import extract_zip, safe_upload_name
from adcore.data.layout import open_image_set
from adcore.data.records import ImageSet, SkippedFile, is_hidden, sorted_skipped


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
        safe = safe_upload_name(name)
        if any(is_hidden(part) for part in safe.split("/")):
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
    image_set.skipped = sorted_skipped(skipped + image_set.skipped)
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


def _unused_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate
