"""The on-disk run store: one folder per finished training run, written atomically.

A run folder holds ``config.json`` (what was trained, on what, how), ``state.safetensors`` (the
method's learned tensors, never pickled code), ``history.json`` (training progress) and
``results.npz`` (scores, embeddings and small anomaly maps for every image of the data set it was
trained with). It is assembled under a hidden temporary name and renamed into place at the end, so
a crash or a cancel never leaves a folder that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from adcore.files import write_atomic
from adcore.methods import Method, build_saved_method

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "state.safetensors", "history.json", "results.npz")
_INCOMPLETE_PREFIX = ".incomplete-"


def default_runs_dir() -> Path:
    """``$ADCORE_RUNS_DIR`` or ``runs/`` in the current directory."""
    return Path(os.environ.get("ADCORE_RUNS_DIR", "runs"))


def new_run_id(method: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method}-{uuid.uuid4().hex[:6]}"


class Run:
    """A finished run as stored. ``results`` (scores, embeddings, maps of every image) is read from
    ``results.npz`` on first access, so listing many runs stays fast; the method loads on demand."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        history: list[dict],
        results: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.history = history
        self._results = results

    @property
    def results(self) -> dict[str, np.ndarray]:
        if self._results is None:
            self._results = read_results(self.path)
        return self._results

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def method_name(self) -> str:
        return self.config["method"]

    def load_method(self, device: torch.device | None = None) -> Method:
        method = build_saved_method(self.config["method"], self.config["params"])
        state = load_file(str(self.path / "state.safetensors"))
        return method.load_state_dict(state, device=device)


def write_run(
    root: Path,
    run_id: str,
    *,
    config: dict[str, Any],
    method: Method,
    history: list[dict],
    results: dict[str, np.ndarray],
) -> Path:
    """Write a complete run folder ``root/run_id`` atomically and return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / run_id
    if final.exists():
        raise FileExistsError(f"run {run_id} already exists in {root}")
    tmp = root / f"{_INCOMPLETE_PREFIX}{run_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(method.state_dict(), str(tmp / "state.safetensors"))
        (tmp / "history.json").write_text(json.dumps(history, default=_jsonable))
        np.savez_compressed(tmp / "results.npz", **results)
        config = {"format": FORMAT_VERSION, "run_id": run_id, **config}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_jsonable))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def update_config(path: Path, **changes: Any) -> None:
    """Change keys of a run's config (e.g. its display name) by write-then-rename."""
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    write_atomic(path / "config.json", json.dumps(config, indent=2, default=_jsonable).encode("utf-8"))


def load_run(path: Path | str) -> Run:
    """Load a run folder; raises ValueError saying what is wrong with a broken one.

    Cheap checks only (no array is decompressed): the config's format, the files present, the
    results' table of contents and the weights' header against the file's length."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder at {path}")
    try:
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else None
    except (ValueError, OSError) as exc:
        raise ValueError(f"run {path.name} is unreadable: config.json: {exc}") from exc
    version = config.get("format") if isinstance(config, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:  # its files may differ: check nothing else
        raise ValueError(
            f"run {path.name} was written by a newer adcore (run format {version}; this one reads "
            f"{FORMAT_VERSION}): upgrade adcore to open it"
        )
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"run {path.name} is incomplete: missing {', '.join(missing)}")
    if not isinstance(config, dict):
        raise ValueError(f"run {path.name} is unreadable: config.json is not a JSON object")
    try:
        history = json.loads((path / "history.json").read_text())
        with np.load(path / "results.npz", allow_pickle=False) as data:
            if "score" not in data.files:  # reads the zip directory only, not the arrays
                raise ValueError("results.npz has no scores")
        with safe_open(str(path / "state.safetensors"), "pt"):
            pass  # parses the header and checks that the file holds every tensor it lists
    except SafetensorError as exc:
        raise ValueError(f"run {path.name} is unreadable: state.safetensors is damaged or truncated ({exc})") from exc
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"run {path.name} is unreadable: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"run {path.name} has format {version!r}, expected {FORMAT_VERSION}")
    for key in ("method", "params"):
        if key not in config:
            raise ValueError(f"run {path.name} config has no {key!r}")
    return Run(path=path, config=config, history=history)


def read_results(path: Path | str, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of a run's ``results.npz`` (but those named in ``skip``); ValueError if the run
    folder is gone or the file is damaged (the quick checks of ``load_run`` do not read the arrays)."""
    path = Path(path)
    try:
        with np.load(path / "results.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files if k not in skip}
    except FileNotFoundError as exc:
        raise ValueError(f"run {path.name} is gone: its folder was deleted or moved") from exc
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"run {path.name} is unreadable: results.npz is damaged ({exc})") from exc


def list_runs(root: Path | str | None = None) -> tuple[list[Run], list[tuple[str, str]]]:
    """All readable runs under ``root``, newest first, and (folder name, reason) for broken ones."""
    root = Path(root) if root is not None else default_runs_dir()
    runs, broken = [], []
    if not root.is_dir():
        return runs, broken
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            runs.append(load_run(child))
        except (ValueError, FileNotFoundError) as exc:
            broken.append((child.name, str(exc)))
    runs.sort(key=lambda r: r.config.get("created", ""), reverse=True)
    return runs, broken


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")
