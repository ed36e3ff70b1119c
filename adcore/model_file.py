"""The ``.adcore`` model file format: write, verify and read it; nothing here knows runs or methods.

The file is a plain **safetensors** file:

* the tensors are the method's learned state under ``method/<name>`` and, where the run scores
  images with an embedding scorer (``adcore.scoring.SCORERS``), the scorer slot under
  ``scorer/<name>``: the normal embeddings it is fitted on plus a few check scores. Scorers hold
  scikit-learn objects that have no plain-tensor form without pickling, so loading refits the scorer
  (deterministic: seeded) and refuses the file if the check scores are not reproduced;
* the safetensors ``__metadata__`` (string -> string) holds ``adcore.format`` = ``adcore-model``,
  ``adcore.format_version``, ``adcore.header`` (one JSON object with every non-tensor part: method
  name and resolved parameters, the preprocessing, the frozen pretrained network's fingerprint, the
  scorer's name and parameters, the threshold and how it was chosen, the heat-map colour range,
  the source run and the versions it was made with) and ``adcore.digest`` = ``sha256:<hex>``.

Why safetensors and not a zip with a manifest: the runs already store weights this way, loading it
cannot execute code (no pickle anywhere: the header is JSON, tensors are raw little-endian bytes
described by JSON), any safetensors tool can open the weights, and there is one file to hash and one
parser to trust instead of a zip reader plus a per-member checksum table.

Integrity: safetensors does not checksum anything, so the digest is SHA-256 over **every byte of
the file** with the 64 hex digits of the digest itself replaced by ``0``. Hashing the exact bytes
(rather than re-serialised tensors and header) means a changed byte anywhere is caught: in the
tensor data, in the JSON, even in the header's padding, and does not depend on safetensors writing
the same bytes in every version. The digest detects corruption and careless edits; it is not a
signature (anyone can recompute it), so a file from an untrusted source is safe to *load* (no code
runs) but its scores are only as trustworthy as its source.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT_MARKER = "adcore-model"
FORMAT_VERSION = 1
SUFFIX = ".adcore"

METHOD_PREFIX = "method/"  # the method's learned tensors
SCORER_PREFIX = "scorer/"  # an embedding scorer's slot
_KEY_FORMAT, _KEY_VERSION, _KEY_HEADER, _KEY_DIGEST = (
    "adcore.format",
    "adcore.format_version",
    "adcore.header",
    "adcore.digest",
)
_DIGEST_PREFIX = "sha256:"
_PLACEHOLDER = "0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


def write_model_bytes(tensors: dict[str, torch.Tensor], header: dict) -> bytes:
    """The file's bytes: ``tensors`` and the JSON ``header`` in safetensors, the digest filled in."""
    metadata = {
        _KEY_FORMAT: FORMAT_MARKER,
        _KEY_VERSION: str(FORMAT_VERSION),
        _KEY_HEADER: json.dumps(header, sort_keys=True, allow_nan=False),
        _KEY_DIGEST: _DIGEST_PREFIX + _PLACEHOLDER,
    }
    data = bytearray(save_safetensors(tensors, metadata=metadata))
    start = _digest_position(bytes(data), _PLACEHOLDER)
    digest = hashlib.sha256(data).hexdigest()  # the placeholder is in place while hashing
    data[start : start + 64] = digest.encode("ascii")
    return bytes(data)


def _digest_position(data: bytes, hex_digest: str) -> int:
    """Offset of the digest's hex digits in the file; it must occur exactly once in the header."""
    (header_len,) = struct.unpack("<Q", data[:8])
    needle = f'"{_DIGEST_PREFIX}{hex_digest}"'.encode("ascii")
    header = data[8 : 8 + header_len]
    at = header.find(needle)
    if at < 0 or header.find(needle, at + 1) >= 0:
        raise ValueError("the digest does not appear exactly once in the header")
    return 8 + at + 1 + len(_DIGEST_PREFIX)


def read_model_file(path: Path | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Verify a model file and return (header, tensors); ValueError says what is wrong with it.

    Nothing from the file is executed: the header is parsed as JSON and the tensors by safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return read_model_bytes(path.read_bytes(), path.name)


def read_model_bytes(data: bytes, name: str = "the model file") -> tuple[dict, dict[str, torch.Tensor]]:
    """``read_model_file`` for the file's bytes (an upload, say); ``name`` is used in messages."""
    metadata, data_len = _parse_container(data, name)
    foreign = f"{name} is a safetensors file but not an adcore model (no {FORMAT_MARKER!r} marker)"
    if _KEY_FORMAT not in metadata and _KEY_DIGEST not in metadata:
        raise ValueError(foreign)
    version = metadata.get(_KEY_VERSION, "")
    if version.isdigit() and int(version) > FORMAT_VERSION:  # a newer format may check itself differently
        raise ValueError(
            f"{name} has model format {version}, newer than this adcore reads ({FORMAT_VERSION}); "
            "upgrade adcore"
        )
    if len(data) < data_len:
        raise ValueError(f"{name} is truncated: {len(data):,} bytes, its header describes {data_len:,}")
    _check_digest(data, metadata.get(_KEY_DIGEST, ""), name)
    # Past the digest, the bytes are exactly as written: what is wrong now was written that way.
    if metadata.get(_KEY_FORMAT) != FORMAT_MARKER:
        raise ValueError(foreign)
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{name}: unknown model format version {version!r}")
    try:
        header = json.loads(metadata[_KEY_HEADER])
        tensors = load_safetensors(data)
    except (KeyError, ValueError, safetensors.SafetensorError) as exc:
        raise ValueError(f"{name}: unreadable model contents ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_MARKER:
        raise ValueError(f"{name}: the model header is not an adcore header")
    return header, tensors


def _check_digest(data: bytes, digest: str, name: str) -> None:
    """Recompute SHA-256 over the file with the digest's hex digits zeroed; refuse on any difference."""
    hex_digest = digest.removeprefix(_DIGEST_PREFIX)
    damaged = f"{name} is damaged or was modified"
    if not digest.startswith(_DIGEST_PREFIX) or not _HEX64.match(hex_digest):
        raise ValueError(f"{damaged}: its digest field is missing or malformed")
    try:
        at = _digest_position(data, hex_digest)
    except ValueError:
        raise ValueError(f"{damaged}: its digest field is malformed") from None
    hasher = hashlib.sha256()
    hasher.update(data[:at])
    hasher.update(_PLACEHOLDER.encode("ascii"))
    hasher.update(data[at + 64 :])
    if not hmac.compare_digest(hasher.hexdigest(), hex_digest):
        raise ValueError(f"{damaged}: its SHA-256 digest does not match its contents")


def _parse_container(data: bytes, name: str) -> tuple[dict[str, str], int]:
    """The safetensors metadata and the file length its header describes, or a clear ValueError."""
    kind = _foreign_kind(data)
    if kind:
        raise ValueError(f"{name} is not an adcore model file: it is {kind}")
    if len(data) < 8:
        raise ValueError(f"{name} is not an adcore model file (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > _MAX_HEADER_BYTES or data[8:9] != b"{":
        raise ValueError(f"{name} is not an adcore model file (not a safetensors file)")
    if 8 + header_len > len(data):
        raise ValueError(f"{name} is truncated (or not a safetensors file): its header runs past the end")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{name} is damaged or not an adcore model file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not an adcore model file (not a safetensors header)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{name} is not an adcore model file (unexpected safetensors metadata)")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ValueError(f"{name} is damaged: tensor {key!r} has no valid data offsets") from None
    return metadata, 8 + header_len + end


def _foreign_kind(data: bytes) -> str | None:
    """A human name for well-known non-model files, to make the refusal specific."""
    if len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS:
        return "a Python pickle, which adcore never loads (unpickling can run arbitrary code)"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save checkpoints are zipped pickles, which adcore never loads)"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    if data[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    return None
