"""Writing files so that nobody ever reads half of one, and saying in words why a write failed."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path


def write_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder, synced and then
    renamed over ``path``: readers see the old file or the new one, never a part. On any failure
    (a full disk, an interrupt) the temporary file is removed and an existing ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # a full disk may only say so here (delayed allocation)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def describe_os_error(exc: OSError) -> str:
    """One line for people: what went wrong with which file, and what to do where that is clear."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full: no space left to write{where}. Free some space and try again"
    if exc.errno == errno.EDQUOT:
        return f"the disk quota is used up: no space left to write{where}. Free some space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    if exc.errno == errno.EROFS:
        return f"the file system is read-only{where}"
    return f"{exc.strerror or exc}{where}"
