"""UI helpers shared by the pages: the server's job manager, the current image set, cached loading,
and widgets built from registry parameter specs. Computation lives in adcore (viz for pictures)."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import streamlit as st

from adcore import viz
from adcore.augment import AUGMENTATIONS, get_augmentation
from adcore.data import ImageRecord, ImageSet, SkippedFile, load_image, open_image_set, save_uploads
from adcore.jobs import JobManager
from adcore.registry import Param
from adcore.runs import default_runs_dir, list_runs

APP_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = APP_DIR / "sample_data"
UPLOADS_DIR = APP_DIR / "data" / "uploads"  # git-ignored
SLIDER_MAX_INT_RANGE = 1000  # wider integer ranges (epochs, seeds) get a number box instead


# --- shared server objects ----------------------------------------------------------------------


def job_manager() -> JobManager:
    """The one JobManager of this server process for the runs folder in use (``$ADCORE_RUNS_DIR``)."""
    return _job_manager(str(default_runs_dir().resolve()))


@st.cache_resource(show_spinner=False)
def _job_manager(runs_root: str) -> JobManager:
    # Held by the server, not the session: a reload or a second tab sees the same jobs.
    return JobManager(Path(runs_root))


@st.cache_resource(show_spinner="Checking every image of the set…", max_entries=16)
def open_set(path: str) -> ImageSet:
    """``adcore.data.open_image_set`` once per folder per server; callers must not modify the result."""
    return open_image_set(path)


# --- the current image set (per session) --------------------------------------------------------


def require_app() -> None:
    """Send a page that runs without app.py through app.py (call first on every page).

    Because a folder named ``pages/`` exists, a fresh server runs Streamlit's legacy multipage mode
    until app.py first calls ``st.navigation``; a first request straight to ``/train`` would then run
    the page file alone, without the session state app.py sets up.
    """
    if "image_set" not in st.session_state:
        st.switch_page(APP_DIR / "app.py")


def current_image_set() -> ImageSet:
    """The image set this session works on; app.py puts the demo set there at the start."""
    return st.session_state["image_set"]


def use_image_set(image_set: ImageSet) -> None:
    """Make ``image_set`` the one every page of this session works on."""
    st.session_state["image_set"] = image_set


def is_demo(image_set: ImageSet) -> bool:
    return Path(image_set.root).resolve() == DEMO_DIR.resolve()


def save_uploaded_files(files: Iterable[tuple[str, bytes]], uploads_root: Path | None = None) -> ImageSet:
    """Write uploaded ``(name, bytes)`` files (images and/or zips) into a new folder under
    ``uploads_root`` (default ``UPLOADS_DIR``) named by time and content, and open it. Nothing bad
    raises: it is listed in ``skipped`` (a refused zip too, see ``refused_zips``)."""
    files = list(files)
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode("utf-8", "replace") + b"\0" + hashlib.sha256(data).digest())
    return save_uploads(files, new_upload_dir(digest.hexdigest()[:8], uploads_root))


def new_upload_dir(tag: str, uploads_root: Path | None = None) -> Path:
    """A new folder path under ``uploads_root`` (default ``UPLOADS_DIR``), named ``<time>-<tag>``."""
    base = Path(uploads_root or UPLOADS_DIR) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{tag}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def refused_zips(skipped: Sequence[SkippedFile]) -> list[SkippedFile]:
    """The uploaded zips that were refused as a whole (too large, too many files, not a zip)."""
    return [s for s in skipped if s.reason.startswith("zip refused")]


# --- cached pictures ----------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(records: tuple[ImageRecord, ...], size: int) -> list[np.ndarray]:
    """Thumbnails (HWC uint8) of ``records``, ground-truth masks outlined in red."""
    return [viz.record_thumbnail(r, size) for r in records]


@st.cache_data(show_spinner=False, max_entries=32)  # full-size images: keep only what previews show
def _image(path: str) -> np.ndarray:
    return load_image(path)


def images_of(records: Sequence[ImageRecord]) -> list[np.ndarray]:
    """HWC uint8 images of ``records``, each decoded once per server."""
    return [_image(str(r.path)) for r in records]


def show_samples(samples: Sequence[viz.AugmentationSample], columns: int) -> None:
    """A grid of samples, ``columns`` per row, each shown as "original | augmented"."""
    for start in range(0, len(samples), columns):
        for col, s in zip(st.columns(columns), samples[start : start + columns]):
            col.image(viz.side_by_side(s.original, s.augmented), caption="original · augmented", width="stretch")


# --- runs ---------------------------------------------------------------------------------------


def runs_table(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows for the runs table (newest first) and (folder, reason) of broken run folders."""
    root = Path(root)
    # Re-read only when a run folder appears, disappears or changes (its mtime moves).
    signature = []
    if root.is_dir():
        for child in root.iterdir():
            try:
                signature.append((child.name, child.stat().st_mtime_ns))
            except OSError:  # renamed or removed while we looked (a run being written)
                continue
    return _runs_rows(str(root.resolve()), tuple(sorted(signature)))


@st.cache_data(show_spinner=False, max_entries=8)
def _runs_rows(root: str, signature: tuple) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    runs, broken = list_runs(root)
    return [viz.run_row(r.config, r.run_id) for r in runs], broken


# --- forms from registry parameter specs ------------------------------------------------------


def label_of(name: str) -> str:
    """``"random_resized_crop"`` -> ``"Random resized crop"``."""
    return name.replace("_", " ").capitalize()


def param_inputs(
    specs: Sequence[Param], key_prefix: str, values: dict[str, Any] | None = None, *, columns: int = 1
) -> dict[str, Any]:
    """One widget per parameter spec (help text as ``help=``); returns ``{name: value}``.

    Floats with a range get a slider, log-scale floats (learning rates) a number box, integers a
    slider when their range is small and a number box otherwise, choices a select box, booleans a
    toggle. A widget starts from its kept value (see ``kept``), else ``values``, else the default.
    """
    values = values or {}
    cells = st.columns(columns) if columns > 1 else [st.container()]
    out = {}
    for i, spec in enumerate(specs):
        key = f"{key_prefix}.{spec.name}"
        try:
            value = spec.validate(kept(key, values.get(spec.name, spec.default)))
        except ValueError:  # a stale value (the registry changed): start from the default
            value = spec.default
        with cells[i % len(cells)]:
            out[spec.name] = keep(key, _param_widget(spec, key, value))
    return out


def _param_widget(spec: Param, key: str, value: Any) -> Any:
    label = spec.name.replace("_", " ")
    common = {"help": spec.help or None, "key": key}
    if spec.type is bool:
        return st.toggle(label, value=bool(value), **common)
    if spec.choices is not None:
        options = list(spec.choices)
        return st.selectbox(label, options, index=options.index(value), **common)
    if spec.type is str:
        return st.text_input(label, value=str(value), **common)
    low = None if spec.low is None else spec.type(spec.low)
    high = None if spec.high is None else spec.type(spec.high)
    if spec.type is int:
        if low is not None and high is not None and high - low <= SLIDER_MAX_INT_RANGE:
            return st.slider(label, low, high, int(value), step=1, **common)
        return int(st.number_input(label, min_value=low, max_value=high, value=int(value), step=1, **common))
    if spec.log or low is None or high is None:
        step = 10.0 ** math.floor(math.log10(abs(value))) if value else 0.1
        return float(
            st.number_input(label, min_value=low, max_value=high, value=float(value), step=step, format="%g", **common)
        )
    step = 10.0 ** math.floor(math.log10((high - low) / 100))
    decimals = max(0, -math.floor(math.log10(step)))
    value = min(high, max(low, round(float(value), decimals)))
    return st.slider(label, low, high, value, step=step, format=f"%.{decimals}f", **common)


def augmentation_editor(key_prefix: str, initial: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict]]:
    """Pick augmentations from the registry (in order) and set their parameters.

    Returns the chain as ``[(name, params), ...]``. The widgets start from their kept values,
    else from ``initial``; ``preset_chain`` replaces what is kept.
    """
    names = AUGMENTATIONS.names()
    initial_params = {name: dict(params) for name, params in initial}
    names_key = f"{key_prefix}.names"
    chosen = st.multiselect(
        "Augmentations, applied in this order",
        names,
        default=[n for n in kept(names_key, list(initial_params)) if n in names],
        format_func=label_of,
        key=names_key,
        placeholder="No augmentation: the images are used as they are",
    )
    keep(names_key, chosen)
    chain = []
    for name in chosen:
        entry = get_augmentation(name)
        with st.container(border=True):
            st.markdown(f"**{label_of(name)}** · {entry.help}")
            params = param_inputs(
                entry.params, f"{key_prefix}.{name}", initial_params.get(name), columns=min(2, len(entry.params) or 1)
            )
        chain.append((name, params))
    return chain


def preset_chain(key_prefix: str, chain: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Make the ``augmentation_editor`` under ``key_prefix`` show ``chain`` on its next run
    (for a button's ``on_click``: widget values can only be replaced before the widgets are drawn)."""
    forget_widgets(key_prefix)
    keep(f"{key_prefix}.names", [name for name, _ in chain])
    for name, params in chain:
        for param, value in params.items():
            keep(f"{key_prefix}.{name}.{param}", value)


def kept(key: str, default: Any) -> Any:
    """The value widget ``key`` had when the user last left the page, else ``default``: pass it as
    the widget's ``value=`` and the result to ``keep``. (Streamlit forgets the values of widgets
    that a run does not draw, so without this a visit to another page resets them.)"""
    return st.session_state.get("kept", {}).get(key, default)


def keep(key: str, value: Any) -> Any:
    """Remember ``value`` as widget ``key``'s value for ``kept``; returns ``value``."""
    st.session_state.setdefault("kept", {})[key] = value
    return value


def remembered(widget: Callable[..., Any], label: str, *args: Any, key: str, value: Any, **kwargs: Any) -> Any:
    """``widget(label, *args, value=value, key=key, **kwargs)`` (a slider, number or text input)
    that keeps its value when the user visits another page and comes back."""
    return keep(key, widget(label, *args, value=kept(key, value), key=key, **kwargs))


def forget_widgets(key_prefix: str) -> None:
    """Drop the widgets under ``key_prefix`` and their kept values: they start again from their
    pre-fill. Names are dotted, so ``"train.autoencoder.aug"`` covers ``"train.autoencoder.aug.names"``."""
    prefix = key_prefix.rstrip(".") + "."
    for key in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[key]
    store = st.session_state.get("kept", {})
    for key in [k for k in store if k.startswith(prefix)]:
        del store[key]
