"""UI helpers shared by the pages: the server's job manager, the current image set, cached loading,
and widgets built from registry parameter specs. Computation lives in adcore (viz for pictures)."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import streamlit as st

from adcore import viz
from adcore.augment import AUGMENTATIONS, get_augmentation
from adcore.data import (
    ImageError,
    ImageRecord,
    ImageSet,
    SkippedFile,
    allowed_data_roots,
    load_image,
    open_image_set,
    save_uploads,
)
from adcore.jobs import JobManager
from adcore.photo_cache import stacked_thumbnail
from adcore.registry import Param
from adcore.runs import Run, default_runs_dir, list_runs, load_run, read_results
from adcore.scoring import SCORERS, rescore_run
from adcore.threshold import Threshold, same_scores, threshold_for

APP_DIR = Path(__file__).resolve().parent.parent
DEMO_DIR = APP_DIR / "sample_data"
DATA_DIR_ENV = "ADCORE_DATA_DIR"


def default_data_dir() -> Path:
    """Where uploads are kept: ``$ADCORE_DATA_DIR``, else a ``data`` folder beside the runs folder
    (``runs/`` and ``data/`` side by side, both git-ignored when they are in the checkout). Read at
    each call, like the runs folder, so the two cannot disagree."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else default_runs_dir().resolve().parent / "data"


def uploads_dir() -> Path:
    """The folder under the data folder that holds one folder per upload."""
    return default_data_dir() / "uploads"


UPLOAD_STAMP = re.compile(r"^(\d{8})-(\d{2})(\d{2})\d{2}-(.+)$")  # new_upload_dir's "<time>-<name>"
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


def current_image_set() -> ImageSet:
    """The image set this session works on; app.py puts the demo set there at the start. If its
    folder has gone (deleted or moved) since it was opened, the session is back on the demo set and
    the page says so, rather than showing images that are no longer there."""
    image_set = st.session_state["image_set"]
    if Path(image_set.root).is_dir():
        return image_set
    st.warning(
        f"The folder of the image set you were working on, {Path(image_set.root).name}, is gone (deleted "
        "or moved), so you are back on the demo set. Upload or open your images again on the Data page.",
        icon=":material/folder_off:",
    )
    demo = open_set(str(DEMO_DIR))
    use_image_set(demo)
    return demo


def use_image_set(image_set: ImageSet) -> None:
    """Make ``image_set`` the one every page of this session works on."""
    st.session_state["image_set"] = image_set


def data_roots() -> list[Path]:
    """The folders a visitor may open by path ("Folder on the server"): ``$ADCORE_DATA_ROOTS``, else
    the app's data folder and the demo set."""
    return allowed_data_roots((default_data_dir(), DEMO_DIR))


def is_demo(image_set: ImageSet) -> bool:
    return Path(image_set.root).resolve() == DEMO_DIR.resolve()


def set_name(image_set: ImageSet) -> str:
    """What the pages call an image set: its folder's name, never the server path; an uploaded set
    by the name it came under and when ("bottle, added 2026-12-01 12:05")."""
    if is_demo(image_set):
        return "the demo set"
    root = Path(image_set.root)
    stamp = UPLOAD_STAMP.match(root.name)
    if stamp is None or not root.resolve().is_relative_to(uploads_dir()):
        return root.name
    day, hour, minute, name = stamp.groups()
    return f"{name}, added {day[:4]}-{day[4:6]}-{day[6:]} {hour}:{minute}"


def save_uploaded_files(files: Iterable[tuple[str, bytes]], uploads_root: Path | None = None) -> ImageSet:
    """Write uploaded ``(name, bytes)`` files (images and/or zips) into a new folder under
    ``uploads_root`` (default ``uploads_dir()``), named by the time and the upload (a single zip's
    name, else "photos"), and open it. Nothing bad raises: it is listed in ``skipped`` (a refused
    zip too, see ``refused_zips``)."""
    files = list(files)
    zips = [PurePosixPath(name.replace("\\", "/")).stem for name, _ in files if name.lower().endswith(".zip")]
    tag = _safe_tag(zips[0]) if len(zips) == 1 and len(files) == 1 else "photos"
    return save_uploads(files, new_upload_dir(tag, uploads_root))


def _safe_tag(name: str) -> str:
    """``name`` as a folder-name part: letters, digits, ``-``, ``_`` and ``.``, at most 60 of them."""
    tag = re.sub(r"[^\w.-]+", "_", name).strip("._")[:60]
    return tag or "photos"


def new_upload_dir(tag: str, uploads_root: Path | None = None) -> Path:
    """A new folder path under ``uploads_root`` (default ``uploads_dir()``), named ``<time>-<tag>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(uploads_root or uploads_dir()) / f"{stamp}-{_safe_tag(tag)}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


SKIPPED_CHAR_PX = 8  # generous for the table font: a file column this wide per character never cuts a name


def skipped_table(skipped: Sequence[tuple[str, str]]) -> None:
    """The (file, reason) of skipped files as a table whose file names are not cut off: the file
    column is as wide as the longest name (a name wider than the page scrolls sideways)."""
    longest = max((len(name) for name, _ in skipped), default=0)
    st.dataframe(
        [{"file": name, "reason": reason} for name, reason in skipped],
        hide_index=True,
        width="stretch",
        height=min(300, 38 + 35 * len(skipped)),
        column_config={
            "file": st.column_config.TextColumn(width=max(200, SKIPPED_CHAR_PX * longest + 24)),
            "reason": st.column_config.TextColumn(width="medium"),
        },
    )


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
    """A grid of samples, ``columns`` per row, each shown as "original | augmented"; when the chain
    changed none of them, the images alone (identical pairs would only look like a mistake)."""
    if all(np.array_equal(s.original, s.augmented) for s in samples):
        st.caption("The chain leaves these images as they are:")
        columns *= 2
        for start in range(0, len(samples), columns):
            for col, s in zip(st.columns(columns), samples[start : start + columns]):
                col.image(s.original, width="stretch")
        return
    for start in range(0, len(samples), columns):
        for col, s in zip(st.columns(columns), samples[start : start + columns]):
            col.image(viz.side_by_side(s.original, s.augmented), caption="original · augmented", width="stretch")


# --- runs ---------------------------------------------------------------------------------------


def run_configs(root: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """(run id, config) of every readable run under ``root`` (newest first) and (folder, reason) of
    broken run folders; read again only when a run folder appears, disappears or changes."""
    root = Path(root)
    signature = []
    if root.is_dir():
        for child in root.iterdir():
            try:
                signature.append((child.name, child.stat().st_mtime_ns))
            except OSError:  # renamed or removed while we looked (a run being written)
                continue
    return _run_configs(str(root.resolve()), tuple(sorted(signature)))


@st.cache_data(show_spinner=False, max_entries=8)
def _run_configs(root: str, signature: tuple) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    runs, broken = list_runs(root)
    return [(r.run_id, r.config) for r in runs], broken


def runs_table(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows for the runs table (newest first) and (folder, reason) of broken run folders."""
    configs, broken = run_configs(root)
    return [viz.run_row(config, run_id) for run_id, config in configs], broken


def runs_on_set(image_set: ImageSet) -> list[tuple[str, dict[str, Any]]]:
    """(run id, config) of the runs trained on ``image_set``'s folder, newest first."""
    root = Path(image_set.root).resolve()
    configs, _ = run_configs(runs_root())
    on_set = []
    for run_id, config in configs:
        data_root = viz.run_data_root(config)
        if data_root is not None and Path(data_root).resolve() == root:
            on_set.append((run_id, config))
    return on_set


# --- forms from registry parameter specs ------------------------------------------------------


PROPER_NAMES = {"cutpaste": "CutPaste", "cutpaste_scar": "CutPaste scar"}  # as their paper spells them


def label_of(name: str) -> str:
    """``"random_resized_crop"`` -> ``"Random resized crop"``; ``"cutpaste"`` -> ``"CutPaste"``."""
    return PROPER_NAMES.get(name) or name.replace("_", " ").capitalize()


def param_inputs(
    specs: Sequence[Param],
    key_prefix: str,
    values: dict[str, Any] | None = None,
    *,
    columns: int = 1,
    options: dict[str, dict[Any, str]] | None = None,
) -> dict[str, Any]:
    """One widget per parameter spec (help text as ``help=``); returns ``{name: value}``.

    Floats with a range get a slider, log-scale floats (learning rates) a number box, integers a
    slider when their range is small and a number box otherwise, choices a select box, booleans a
    toggle. ``options`` gives a parameter a select box over the page's own {value: label} (e.g. the
    runs that can serve as a teacher) instead. A widget starts from its kept value (see ``kept``),
    else ``values``, else the default.
    """
    values, options = values or {}, options or {}
    out = {}
    # Parameters with page options come first, full width (their labels are long), then the grid.
    with st.container():
        for spec in (spec for spec in specs if spec.name in options):
            key = f"{key_prefix}.{spec.name}"
            labels = dict(options[spec.name])
            value = _start_value(spec, key, values)
            labels.setdefault(value, str(value))  # a kept value (e.g. a typed path) stays selectable
            widget = st.selectbox(
                spec.name.replace("_", " "), list(labels), index=list(labels).index(value),
                format_func=labels.get, help=spec.help or None, key=key,
            )  # fmt: skip
            out[spec.name] = keep(key, widget)
    cells = st.columns(columns) if columns > 1 else [st.container()]
    for i, spec in enumerate(spec for spec in specs if spec.name not in options):
        key = f"{key_prefix}.{spec.name}"
        with cells[i % len(cells)]:
            out[spec.name] = keep(key, _param_widget(spec, key, _start_value(spec, key, values)))
    return {spec.name: out[spec.name] for spec in specs}


def _start_value(spec: Param, key: str, values: dict[str, Any]) -> Any:
    try:
        return spec.validate(kept(key, values.get(spec.name, spec.default)))
    except ValueError:  # a stale value (the registry changed): start from the default
        return spec.default


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
    slider_step = None if low is None or high is None else 10.0 ** math.floor(math.log10((high - low) / 100))
    decimals = 0 if slider_step is None else max(0, -math.floor(math.log10(slider_step)))
    # A number box where a slider's step would round the value away (a weight decay of 1e-4 on 0..0.1).
    if spec.log or slider_step is None or round(float(value), decimals) != float(value):
        step = 10.0 ** math.floor(math.log10(abs(value))) if value else 0.1
        return float(
            st.number_input(label, min_value=low, max_value=high, value=float(value), step=step, format="%g", **common)
        )
    value = min(high, max(low, float(value)))
    return st.slider(label, low, high, value, step=slider_step, format=f"%.{decimals}f", **common)


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
    preset(f"{key_prefix}.names", [name for name, _ in chain])
    for name, params in chain:
        for param, value in params.items():
            preset(f"{key_prefix}.{name}.{param}", value)


def page_chain_changed(chain: list[tuple[str, dict]]) -> None:
    """The Augmentations page's chain is now ``chain``: remember it, and if it changed, have every
    method's chain on the Train page start from it (``carry_page_chain``)."""
    if chain != st.session_state["augmentations"]:
        st.session_state["augment.version"] = st.session_state.get("augment.version", 0) + 1
    st.session_state["augmentations"] = chain


def carry_page_chain(key_prefix: str) -> None:
    """Before drawing the ``augmentation_editor`` under ``key_prefix``: if the chain on the
    Augmentations page changed since this editor last took it, start the editor from it."""
    version = st.session_state.get("augment.version", 0)
    taken = f"carried.{key_prefix}"
    if version and st.session_state.get(taken) != version:
        preset_chain(key_prefix, st.session_state["augmentations"])
        st.session_state[taken] = version


def chain_source(chain: list[tuple[str, dict]], defaults: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Where a Train page chain came from, in words."""
    if st.session_state.get("augment.version") and _full(chain) == _full(st.session_state["augmentations"]):
        return "the one built on the Augmentations page"
    if _full(chain) == _full(defaults):
        return "the method's defaults"
    return "changed here"


def _full(chain: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``chain`` with every parameter spelled out (defaults filled in), so that chains compare by meaning."""
    return [(name, {**{p.name: p.default for p in get_augmentation(name).params}, **params}) for name, params in chain]


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


def preset(key: str, value: Any) -> Any:
    """Make widget ``key`` show ``value`` on the next run, in the browser too (for an ``on_click``).

    Assigning the widget's state is what tells the browser to redraw it: a widget whose state is
    only deleted keeps showing its old value, since the browser keeps its own copy under the key.
    """
    st.session_state[key] = keep(key, value)
    return value


def forget_widgets(key_prefix: str) -> None:
    """Drop the widgets under ``key_prefix`` and their kept values: they start again from their
    pre-fill. Names are dotted, so ``"train.autoencoder.aug"`` covers ``"train.autoencoder.aug.names"``."""
    prefix = key_prefix.rstrip(".") + "."
    for key in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[key]
    store = st.session_state.get("kept", {})
    for key in [k for k in store if k.startswith(prefix)]:
        del store[key]


# --- runs on the Explore pages ------------------------------------------------------------------


def runs_root() -> Path:
    """The runs folder in use (``$ADCORE_RUNS_DIR``, else ``runs/``), absolute."""
    return default_runs_dir().resolve()


def run_label(row: dict[str, Any]) -> str:
    """One line naming a run in a picker: name (or id), method, when, and its image AUROC if any."""
    title = viz.run_title({"name": row["name"], "created": row["created"]}, row["run id"])
    parts = [title, row["method"], row["created"][:16]] if row["name"] else [title]
    if row.get("image AUROC") is not None:
        parts.append(f"AUROC {row['image AUROC']:.3f}")
    return " · ".join(parts)


def pick_run(page_key: str, *, maps: bool = False) -> Run:
    """A run picker (default: the run picked last on any page, else the newest) that returns the
    loaded run, with its anomaly maps only if ``maps``; with no runs yet it shows where to train
    one and stops the page."""
    root = runs_root()
    rows, broken = runs_table(root)
    if not rows:
        no_runs_yet(root, broken)
        st.stop()
    labels = {r["run id"]: run_label(r) for r in rows}
    ids = list(labels)
    current = st.session_state.get("selected_run")
    if current is not None and current not in ids:
        st.info(
            f"The run `{current}` you were looking at is no longer in the runs folder (deleted, moved or "
            "damaged): showing the newest run instead.",
            icon=":material/info:",
        )
    broken_runs_note(broken)
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(current) if current in ids else 0,
        format_func=labels.get,
        key=f"{page_key}.run",
        help="Runs are listed newest first. The run you pick here is the one every Explore page opens.",
    )
    st.session_state["selected_run"] = run_id
    try:
        return load_run_cached(root / run_id) if maps else load_run_scores(root / run_id)
    except (FileNotFoundError, ValueError) as exc:  # deleted or damaged since the list was read
        st.warning(f"The run `{run_id}` cannot be read any more: {exc}.", icon=":material/warning:")
        st.caption("It was probably deleted or changed while this page was open: pick another run above.")
        st.stop()


def broken_runs_note(broken: Sequence[tuple[str, str]]) -> None:
    """Folders in the runs folder that are not readable runs, each with its reason (folded away)."""
    if broken:
        with st.expander(f"{len(broken)} folder(s) in the runs folder are not readable runs"):
            st.markdown("\n".join(f"- `{name}`: {reason}" for name, reason in broken))


def no_runs_yet(root: Path, broken: Sequence[tuple[str, str]] = ()) -> None:
    """The empty state of the Explore pages: no finished run to look at."""
    st.info(
        f"There is no trained model to explore yet (no finished run in `{root}`). Train one: its scores, "
        "maps and threshold appear here as soon as it finishes.",
        icon=":material/info:",
    )
    st.page_link("app_pages/train.py", label="Train a model on the Train page first", icon=":material/model_training:")
    if job_manager().active():
        st.caption("A training job is running: its run appears here when it finishes.")
    if broken:
        names = ", ".join(name for name, _ in broken)
        st.warning(f"{len(broken)} folder(s) in the runs folder are not readable runs: {names}")


def load_run_cached(path: Path) -> Run:
    """The run at ``path`` with all its results (anomaly maps too), read once per server until its
    config changes (a saved threshold)."""
    path = Path(path)
    return _load_run(str(path), _config_version(path))


def load_run_scores(path: Path) -> Run:
    """Like ``load_run_cached`` without the anomaly maps, which only Inspect needs: cheap enough to
    hold many runs (Compare)."""
    path = Path(path)
    return _load_run_scores(str(path), _config_version(path))


@st.cache_resource(show_spinner="Reading the run…", max_entries=4)  # anomaly maps can be large
def _load_run(path: str, config_mtime: int) -> Run:
    # Shared read-only by every session: nothing below changes a Run once its results are read.
    run = load_run(path)
    run.results  # noqa: B018  (read the arrays now, not lazily in some later session)
    return run


@st.cache_resource(show_spinner=False, max_entries=64)
def _load_run_scores(path: str, config_mtime: int) -> Run:
    """The run with its results minus the anomaly maps: all that scores, thresholds and comparing need."""
    run = load_run(path)
    return Run(run.path, run.config, run.history, read_results(path, skip=("anomaly_map",)))


def run_version(run: Run) -> int:
    """Changes when the run's config is rewritten: part of every cache key that depends on the run."""
    return _config_version(run.path)


def _config_version(path: Path) -> int:
    try:
        return (path / "config.json").stat().st_mtime_ns
    except FileNotFoundError:
        raise ValueError(f"run {path.name} is gone: its folder was deleted or moved") from None


# --- scores: the method's own, or an embedding scorer's ------------------------------------------


def scorer_choice(run: Run) -> dict[str, Any] | None:
    """The embedding scorer this session scores ``run`` with ({"name", "params"}), None for the
    method's own score. Starts from the scorer saved with the run, if any."""
    store = st.session_state.setdefault("explore.scorer", {})
    if run.run_id not in store:
        saved = run.config.get("scorer")
        store[run.run_id] = saved if isinstance(saved, dict) and saved.get("name") in SCORERS else None
    return store[run.run_id]


def set_scorer_choice(run: Run, choice: dict[str, Any] | None) -> None:
    st.session_state.setdefault("explore.scorer", {})[run.run_id] = choice


def scorer_title(choice: dict[str, Any] | None) -> str:
    return "the method's own score" if choice is None else f"the {choice['name']} scorer on its embeddings"


def run_scores(run: Run, choice: dict[str, Any] | None) -> np.ndarray:
    """Scores of every row of ``run``: stored ones, or re-scored from its stored embeddings."""
    if choice is None:
        return run.results["score"]
    params = json.dumps(choice.get("params") or {}, sort_keys=True)
    return _rescored(str(run.path), run_version(run), choice["name"], params)


@st.cache_data(show_spinner="Fitting the scorer on the stored embeddings…", max_entries=32)
def _rescored(path: str, version: int, name: str, params: str) -> np.ndarray:
    return rescore_run(_load_run_scores(path, version), name, **json.loads(params))


def score_context(run: Run, choice: dict[str, Any] | None) -> viz.ScoreContext:
    """``adcore.viz.score_context`` of the run with the chosen scores, once per server."""
    key = None if choice is None else json.dumps(choice, sort_keys=True)
    return _score_context(str(run.path), run_version(run), key)


@st.cache_resource(show_spinner=False, max_entries=16)
def _score_context(path: str, version: int, choice: str | None) -> viz.ScoreContext:
    # Shared read-only: ScoreContext computes its curves when built and is never changed afterwards.
    run = _load_run_scores(path, version)
    return viz.score_context(run, run_scores(run, None if choice is None else json.loads(choice)))


# --- the threshold each run decides with ---------------------------------------------------------


def chosen_threshold(run: Run, choice: dict[str, Any] | None, scores: np.ndarray) -> Threshold:
    """The threshold of ``run`` for the scores of ``choice``: the one set on the Scores page in this
    session, else ``adcore.threshold.threshold_for`` them (the saved one if saved for these scores,
    else the default: a 5 % false-alarm target on the hold-out normals)."""
    entry = st.session_state.setdefault("explore.threshold", {}).get(run.run_id)
    if entry is not None and same_scores(entry["scorer"], choice):
        return Threshold.from_dict(entry["threshold"])
    return threshold_for(run, choice, scores)


def set_chosen_threshold(run: Run, choice: dict[str, Any] | None, threshold: Threshold) -> None:
    st.session_state.setdefault("explore.threshold", {})[run.run_id] = {
        "scorer": choice,
        "threshold": threshold.to_dict(),
    }


# --- pictures of a run's rows --------------------------------------------------------------------


def run_records(run: Run) -> dict[str, ImageRecord]:
    """rel_path -> record of the run's image set (for masks); empty if its folder is gone."""
    root = viz.run_data_root(run.config)
    if root is None or not Path(root).is_dir():
        return {}
    return {r.rel_path: r for r in open_set(str(root)).records}


def row_thumbnails(run: Run, rows: Sequence[int], size: int = 160) -> list[np.ndarray]:
    """Thumbnails (HWC uint8) of rows of ``run.results``: ground truth outlined in red; synthetic
    rows show the pasted defect; an image that cannot be read shows a grey tile."""
    return _row_thumbnails(str(run.path), run_version(run), tuple(int(r) for r in rows), size)


@st.cache_data(show_spinner=False, max_entries=128)
def _row_thumbnails(path: str, version: int, rows: tuple[int, ...], size: int) -> list[np.ndarray]:
    run = _load_run_scores(path, version)
    records = run_records(run)
    rel, role = run.results["rel_path"], run.results["role"]
    stored = run.results.get("synthetic_thumbnail")  # runs before it was stored paste them again
    out: list[np.ndarray | None] = [None] * len(rows)
    plain = []
    for i, row in enumerate(rows):
        record = records.get(str(rel[row]))
        if role[row] == "synthetic" and stored is not None:
            position = viz.synthetic_position(run.results, row)
            thumb = stacked_thumbnail(stored, run.results["synthetic_thumbnail_shape"], position)
            out[i] = viz.fit_size(thumb, size)
        elif role[row] != "synthetic" and record is not None:
            out[i] = viz.record_thumbnail(record, size)
        else:
            plain.append(i)
    if plain:
        wanted = [rows[i] for i in plain]
        synthetic = _synthetic(path, version) if any(role[r] == "synthetic" for r in wanted) else None
        for i, image in zip(plain, viz.run_row_images(run, wanted, synthetic)):
            out[i] = viz.placeholder(size) if image is None else viz.fit_size(image, size)
    return out  # type: ignore[return-value]


@st.cache_resource(show_spinner="Pasting the run's synthetic defects again…", max_entries=2)
def _synthetic(path: str, version: int) -> list[np.ndarray] | None:
    """``adcore.viz.synthetic_images`` of a run, once per server (every selection or page showing a
    synthetic row would otherwise paste all of them again); None if a hold-out image is unreadable."""
    try:
        return viz.synthetic_images(_load_run_scores(path, version))
    except ImageError:
        return None


def row_caption(ctx: viz.ScoreContext, row: int) -> str:
    """"3.04 · dent": score and group of one row (synthetic groups say "synthetic")."""
    group = str(ctx.groups[row])
    if viz.group_kind(group) == "synthetic":
        group = f"{group.removeprefix('synthetic ')} (synthetic)"
    return f"{ctx.scores[row]:.3g} · {group}"


def show_rows(run: Run, ctx: viz.ScoreContext, rows: Sequence[int], columns: int = 6, *, key: str = "") -> None:
    """A grid of thumbnails of ``rows`` captioned with score and group; under each, its file name
    as a button that opens the Inspect page on it (when ``key`` is given)."""
    rows = [int(r) for r in rows]
    thumbs = row_thumbnails(run, rows)
    for start in range(0, len(rows), columns):
        for col, row, thumb in zip(st.columns(columns), rows[start : start + columns], thumbs[start : start + columns]):
            col.image(thumb, caption=row_caption(ctx, row), width="stretch")
            if key:
                rel = str(run.results["rel_path"][row])
                col.button(
                    PurePosixPath(rel).name, key=f"{key}.{row}", icon=":material/zoom_in:", on_click=inspect_later,
                    args=(run.run_id, row), type="tertiary", help=f"Inspect {ctx.names[row]}",
                )  # fmt: skip
    if key and st.session_state.pop("inspect.go_now", False):
        st.switch_page("app_pages/inspect.py")


def inspect_later(run_id: str, row: int) -> None:
    """Button callback: open the Inspect page on ``row`` of run ``run_id`` (after this run)."""
    st.session_state["selected_run"] = run_id
    st.session_state["inspect.goto"] = int(row)
    st.session_state["inspect.go_now"] = True


def run_row_image(run: Run, row: int) -> np.ndarray:
    """The full-size image (HWC uint8) of one row of ``run.results``; raises ImageError saying why not."""
    return _row_image(str(run.path), run_version(run), int(row))


@st.cache_data(show_spinner=False, max_entries=32)  # an ImageError is raised again, not cached
def _row_image(path: str, version: int, row: int) -> np.ndarray:
    run = _load_run_scores(path, version)
    synthetic = _synthetic(path, version) if run.results["role"][row] == "synthetic" else None
    return viz.run_row_image(run, row, synthetic)


# --- the other pages' browser code, loaded while the home page is idle -------------------------

# Streamlit's browser app loads each kind of element's code the first time a page shows one; on a
# 2-core machine reading it (selectbox, slider, metric, table, Vega-Lite…) added about 0.7 s to the
# first open of Scores & threshold. These are the elements the pages use, by the name of the file
# Streamlit builds for each (its hash changes with the version; a name that is not found is skipped).
# Plotly (4.7 MB, Embeddings only) is left to load when needed: that page's budget is 3 s.
PREFETCHED_ELEMENTS = (
    "Selectbox", "Radio", "Slider", "NumberInput", "Checkbox", "Metric", "Table", "ImageList", "ButtonGroup",
    "Multiselect", "TextInput", "ArrowVegaLiteChart", "embed", "vega-interpreter", "DataFrame",
)  # fmt: skip


def prefetch_page_code() -> None:
    """Let the browser load the other pages' element code once this page has been drawn and is idle,
    so that the first visit to another page does not wait for it. Nothing is shown."""
    files = _element_files()
    if not files:
        return
    st.html(
        "<script>(() => { const files = " + json.dumps(list(files)) + ";"
        " const script = document.querySelector('script[src*=\"/static/js/index.\"]'); if (!script) return;"
        " const base = script.src.replace(/[^/]*$/, '');"
        " const load = () => files.forEach(f => import(base + f).catch(() => {}));"
        " (window.requestIdleCallback || (f => setTimeout(f, 500)))(load, {timeout: 3000}); })();</script>",
        unsafe_allow_javascript=True,
    )


@functools.cache  # the installed package's files: the same for the server's lifetime
def _element_files() -> tuple[str, ...]:
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    found = []
    for name in PREFETCHED_ELEMENTS:
        matches = sorted(folder.glob(f"{name}.*.js"))
        if len(matches) == 1 and "." not in matches[0].name[len(name) + 1 : -3]:
            found.append(matches[0].name)
    return tuple(found)
