"""Inspect page: one image at a time, with its anomaly heat map, the predicted defect region, the
ground truth where there is one, and the model's reconstruction on demand; or any new image, scored."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import streamlit as st
import torch

from adcore import catalog, viz
from adcore.data import ImageError, load_image, load_mask
from adcore.export import map_display_range
from adcore.loaded_model import LoadedModel, load_model_bytes
from adcore.methods import Method, get_method_class
from adcore.photo_cache import predict_at_side
from adcore.runs import Run
from adcore.threshold import is_anomalous
from app_pages import common


DISPLAY_SIDE = 384  # every picture on the page is shown at this long side
ALL_BUT_TRAINING = "All images except the training normals"
ORDERS = {"high": "Highest score first", "low": "Lowest score first", "name": "File name"}


# --- the model, on demand, for one image --------------------------------------------------------


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _method(path: str, version: int) -> Method:
    # The CPU keeps a single image off a GPU that a training job may be using.
    return common.load_run_cached(Path(path)).load_method(torch.device("cpu"))


@st.cache_data(show_spinner="Running the model on this image…", max_entries=64)
def predict_one(path: str, version: int, image_key: str, _image: np.ndarray) -> dict[str, Any]:
    """Score, full-size anomaly map and reconstruction of one HWC uint8 image (``image_key`` names it)."""
    side = common.load_run_cached(Path(path)).config.get("max_photo_side")  # the size training saw photos at
    prediction = predict_at_side(_method(path, version).predict, [_image], side)
    return {
        "score": float(prediction.scores[0]),
        "map": None if prediction.anomaly_maps is None else prediction.anomaly_maps[0],
        "reconstruction": None if prediction.reconstructions is None else prediction.reconstructions[0],
    }


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """HWC uint8 RGB of uploaded bytes, read with the same checks as every image of a set."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("upload" + PurePosixPath(name).suffix.lower())
        path.write_bytes(data)
        return load_image(path)


# --- drawing --------------------------------------------------------------------------------------


def view_controls(run: Run) -> dict[str, Any]:
    maps = run.results.get("anomaly_map")
    display = map_display_range(run) if maps is not None else None
    c1, c2, c3 = st.columns([2, 2, 3], vertical_alignment="bottom")
    with c1:
        opacity = common.remembered(
            st.slider, "Heat-map opacity", 0.0, 1.0, step=0.05, key="inspect.opacity", value=0.5
        )
    colormap = c2.selectbox("Colours", viz.COLORMAPS, index=viz.COLORMAPS.index(common.kept("inspect.cmap", "Inferno")),
                            key="inspect.cmap")  # fmt: skip
    common.keep("inspect.cmap", colormap)
    controls = {"opacity": opacity, "colormap": colormap, "display": display, "pixel": None}
    if display is not None:
        top = float(np.max(maps))
        low, high = display["low"], max(top, display["high"])
        step = max((high - low) / 200, 1e-6)
        with c3:
            controls["pixel"] = common.remembered(
                st.slider, "Pixel threshold (defect region)", float(low), float(high), step=step, format="%.3g",
                key=f"inspect.{run.run_id}.pixel", value=float(min(high, display["high"])),
                help="The cyan line encloses the pixels whose heat-map value is at least this (a threshold on "
                "pixels, not on the image score). It starts at the hottest pixel of any hold-out normal image.",
            )  # fmt: skip
    return controls


def show_views(image: np.ndarray, anomaly_map: np.ndarray | None, mask: np.ndarray | None,
               controls: dict[str, Any], reconstruction: Callable[[], np.ndarray | None] | None) -> None:  # fmt: skip
    """Original (ground truth in red) | reconstruction | heat map | predicted region (cyan).

    ``reconstruction`` is called inside the second column: it may draw its own switch there and
    returns the reconstruction (HWC uint8) to show, or None. None: the method rebuilds nothing, and
    there is no such column (no empty gap between the photo and its heat map)."""
    small = viz.fit_size(image, DISPLAY_SIDE)
    truth = None
    if mask is not None and mask.any():
        truth = viz.fit_size(mask.astype(np.uint8) * 255, DISPLAY_SIDE, nearest=True) > 127
    thickness = max(1, DISPLAY_SIDE // 160)
    cols = st.columns(4) if reconstruction is not None else st.columns(3)
    if reconstruction is None:
        cols.insert(1, None)
    original = small if truth is None else viz.draw_mask_outline(small, truth, thickness=thickness)
    caption = "Original" + (" · ground truth in red" if truth is not None else "")
    cols[0].image(original, caption=caption, width="stretch")
    if reconstruction is not None:
        with cols[1]:
            rebuilt = reconstruction()
            if rebuilt is not None:
                st.image(viz.fit_size(rebuilt, DISPLAY_SIDE), caption="Reconstruction by the model", width="stretch")
    if anomaly_map is None:
        cols[2].caption("This method gives no anomaly map: only an image score.")
        return
    display = controls["display"] or {"low": float(np.min(anomaly_map)), "high": float(np.max(anomaly_map))}
    heat = viz.overlay_heatmap(small, anomaly_map, controls["opacity"], low=display["low"], high=display["high"],
                               colormap=controls["colormap"])  # fmt: skip
    cols[2].image(heat, caption="Anomaly heat map", width="stretch")
    cols[2].image(viz.colorbar_strip(display["low"], display["high"], controls["colormap"], width=DISPLAY_SIDE),
                  width="stretch")  # fmt: skip
    cols[2].caption(f"{display['low']:.3g} (typical normal) → {display['high']:.3g} (hottest normal pixel) and above")
    if controls["pixel"] is not None:
        region = viz.region_mask(anomaly_map, controls["pixel"], small.shape[:2])
        picture = small if truth is None else viz.draw_mask_outline(small, truth, thickness=thickness)
        if region.any():
            picture = viz.draw_mask_outline(picture, region, color=viz.REGION_COLOR, thickness=thickness)
        if region.any():
            caption = f"Predicted defect region (cyan): {region.mean():.1%} of the image"
        else:
            caption = f"Predicted defect region: no pixel reaches {controls['pixel']:.3g}"
        cols[3].image(picture, caption=caption, width="stretch")


def decision_metrics(score: float, threshold, reference: np.ndarray | None, kind: str | None = None) -> None:
    """Score, decision (and, where the image's ``kind`` is known, whether that decision is right)."""
    flagged = bool(is_anomalous(score, threshold.value))
    below = 0 if reference is None else int(np.count_nonzero(reference < score))
    verdict = None
    if kind is not None:
        defect = kind != "normal"
        what = "synthetic defect" if kind == "synthetic" else "defect" if defect else "normal image"
        verdict = f"{'right' if flagged == defect else 'a miss' if defect else 'a false alarm'}: it is a {what}"
    with st.container(horizontal=True):
        st.metric("Anomaly score", f"{score:.4g}", border=True)
        st.metric(
            "Decision", "Flagged as anomalous" if flagged else "Passed as normal", border=True,
            delta=verdict, delta_arrow="off",
            delta_color="off" if verdict is None else "green" if verdict.startswith("right") else "red",
            help=f"Flagged when the score is at or above the image threshold {threshold.value:.4g} ({threshold.how}).",
        )  # fmt: skip
        st.metric("Image threshold", f"{threshold.value:.4g}", border=True, help=threshold.how)
        if reference is not None:
            st.metric("Normals scoring lower", f"{below} of {reference.size}", border=True,
                      help="How many of the normal images the threshold is set from (held out from training) "
                      "score lower than this image.")  # fmt: skip


# --- browsing a run's images ----------------------------------------------------------------------


def browse(run: Run, ctx: viz.ScoreContext) -> int | None:
    """Group filter, order and previous/next; returns the row to show."""
    options = [ALL_BUT_TRAINING, *ctx.order]
    goto = st.session_state.pop("inspect.goto", None)
    st.session_state.pop("inspect.go_now", None)
    if goto is not None and 0 <= goto < ctx.scores.size:  # sent here from another page's thumbnail
        group = str(ctx.groups[goto])
        common.preset("inspect.group", ALL_BUT_TRAINING if group != "train normal" else group)
        common.preset(f"inspect.{run.run_id}.row", goto)
    c1, c2 = st.columns([3, 2])
    group = common.keep("inspect.group", c1.selectbox(
        "Images", options, index=options.index(common.kept("inspect.group", ALL_BUT_TRAINING))
        if common.kept("inspect.group", ALL_BUT_TRAINING) in options else 0,
        format_func=lambda g: g if g == ALL_BUT_TRAINING else viz.group_label(g, int(ctx.rows[g].size)),
        key="inspect.group",
    ))  # fmt: skip
    order = common.keep("inspect.order", c2.segmented_control(
        "Order", list(ORDERS), default=common.kept("inspect.order", "high"), format_func=ORDERS.get,
        key="inspect.order",
    ) or "high")  # fmt: skip
    if group == ALL_BUT_TRAINING:
        rows = np.flatnonzero(ctx.groups != "train normal")
    else:
        rows = ctx.rows[group]
    if not rows.size:
        st.info("No images in this group.")
        return None
    if order == "name":
        rows = rows[np.argsort([ctx.names[r] for r in rows], kind="stable")]
    else:
        rows = rows[np.argsort(ctx.scores[rows] * (-1 if order == "high" else 1), kind="stable")]
    rows = [int(r) for r in rows]
    key = f"inspect.{run.run_id}.row"
    current = common.kept(key, rows[0])
    if current not in rows:  # the filter or run changed: start at the top of the new list
        current = common.preset(key, rows[0])

    def step(by: int) -> None:
        here = rows.index(st.session_state.get(key, current))
        common.preset(key, rows[(here + by) % len(rows)])

    prev_col, pick_col, next_col = st.columns([1, 6, 1], vertical_alignment="bottom")
    prev_col.button("Previous", icon=":material/arrow_back:", on_click=step, args=(-1,), key="inspect.prev",
                    width="stretch")  # fmt: skip
    next_col.button("Next", icon=":material/arrow_forward:", on_click=step, args=(1,), key="inspect.next",
                    width="stretch")  # fmt: skip
    position = {r: i for i, r in enumerate(rows)}
    row = common.keep(key, pick_col.selectbox(
        f"Image ({len(rows)} in this list)", rows, index=rows.index(current),
        format_func=lambda r: f"{position[r] + 1}. score {ctx.scores[r]:.4g} · "
        f"{viz.group_label(str(ctx.groups[r]))} · {run.results['rel_path'][r]}",
        key=key,
    ))  # fmt: skip
    return row


def show_row(run: Run, ctx: viz.ScoreContext, row: int, controls: dict[str, Any], threshold) -> None:
    results = run.results
    kind = viz.group_kind(str(ctx.groups[row]))
    decision_metrics(float(ctx.scores[row]), threshold, ctx.scores[ctx.reference_rows], kind)
    stored = results["anomaly_map"][row] if "anomaly_map" in results else None
    try:
        image = common.run_row_image(run, row)
    except ImageError as exc:
        st.warning(f"This image can no longer be read ({exc}).", icon=":material/broken_image:")
        if stored is not None:
            display = controls["display"] or {"low": float(np.min(stored)), "high": float(np.max(stored))}
            heat = viz.resize_map(stored, (DISPLAY_SIDE, DISPLAY_SIDE))
            heat = viz.heatmap_rgb(heat, display["low"], display["high"], controls["colormap"])
            st.image(heat, caption="Its stored anomaly heat map", width=DISPLAY_SIDE)
        return
    record = common.run_records(run).get(str(results["rel_path"][row]))
    mask = None
    if record is not None and results["role"][row] != "synthetic":
        try:
            mask = load_mask(record)
        except ImageError:
            mask = None

    def reconstruction() -> np.ndarray | None:
        on = common.remembered(
            st.toggle, "Reconstruction", key="inspect.reconstruct", value=False,
            help="Loads the model and runs it on this one image (cached) to show what it rebuilds; the "
            "heat map stays the stored one.",
        )  # fmt: skip
        if not on:
            st.caption("Switch on to run the model on this image and see what it rebuilds.")
            return None
        rebuilt = predict_one(str(run.path), common.run_version(run), f"row:{row}", image)["reconstruction"]
        if rebuilt is None:
            st.caption("This method does not rebuild images, so there is no reconstruction to show.")
        return rebuilt

    rebuilds = catalog.entry(run.method_name).reconstructs
    show_views(image, stored, mask, controls, reconstruction if rebuilds else None)
    if results["role"][row] == "synthetic":
        st.caption(
            "A synthetic defect: a patch pasted onto a hold-out normal image by the training run, not a real defect."
        )


@st.cache_resource(show_spinner="Checking and loading the model file…", max_entries=2)
def _model_file(digest: str, name: str, _data: bytes) -> LoadedModel:
    return load_model_bytes(_data, name, device=torch.device("cpu"))


@st.cache_data(show_spinner="Running the model file on this image…", max_entries=32)
def predict_with_file(digest: str, image_key: str, _model: LoadedModel, _image: np.ndarray) -> dict[str, Any]:
    prediction = _model.predict([_image])
    return {
        "score": float(prediction.scores[0]),
        "map": None if prediction.anomaly_maps is None else prediction.anomaly_maps[0],
        "reconstruction": None if prediction.reconstructions is None else prediction.reconstructions[0],
    }


def exported_model() -> tuple[str, LoadedModel] | None:
    """A model file (``.adcore``, from Compare or ``python -m adcore export``) dropped by the user."""
    upload = st.file_uploader(
        "Model file (.adcore)", type=["adcore"], key="inspect.model_file",
        help="Exported from the Compare page or with `python -m adcore export`. It is checked (format, "
        "checksum) before use, and nothing in it is ever executed.",
    )  # fmt: skip
    if upload is None:
        return None
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        model = _model_file(digest, upload.name, data)
    except ValueError as exc:
        st.error(str(exc), icon=":material/gpp_bad:")
        return None
    header = model.config
    st.caption(
        f"{upload.name}: {header['method']['name']} from run {header.get('source_run', {}).get('run_id', '?')}, "
        f"threshold {model.threshold.value:.4g} ({model.threshold.how})."
    )
    return digest, model


def score_new_image(run: Run, ctx: viz.ScoreContext, controls: dict[str, Any], threshold) -> None:
    st.subheader("Score a new image")
    source = st.segmented_control(
        "Score with", ["This run", "A model file"], default="This run", key="inspect.score_with",
    ) or "This run"  # fmt: skip
    model = exported_model() if source == "A model file" else None
    if source == "A model file" and model is None:
        st.caption("Drop a model file to score new images with it, at its own exported threshold.")
        return
    upload = st.file_uploader(
        "Drop an image to score it", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"], key="inspect.upload",
    )  # fmt: skip
    if upload is None:
        what = "the model file" if model else "the run's model"
        st.caption(f"The image is scored with {what} and judged at its threshold.")
        return
    data = upload.getvalue()
    try:
        image = decode_upload(data, upload.name)
    except ImageError as exc:
        st.error(f"{upload.name}: {exc}")
        return
    key = "upload:" + hashlib.sha256(data).hexdigest()
    st.markdown(f"**{upload.name}** · {image.shape[1]}×{image.shape[0]} px")
    if model is None:
        out = predict_one(str(run.path), common.run_version(run), key, image)
        decision_metrics(out["score"], threshold, ctx.scores[ctx.reference_rows])
        # The decision is the image score's. The region is drawn at the run's own pixel threshold (the
        # hottest hold-out normal pixel), not at the slider above, which is for browsing the run's images.
        display = controls["display"]
        own = {**controls, "pixel": None if display is None else display["high"]}
        show_views(image, out["map"], None, own, (lambda: out["reconstruction"]) if out["reconstruction"] is not None else None)
        if display is not None:
            st.caption(
                f"The decision comes from the image score alone. The cyan region marks the pixels at or above "
                f"{display['high']:.3g}, the hottest pixel of any hold-out normal image; the pixel slider above "
                "applies to the run's own images only."
            )
        return
    digest, loaded = model
    out = predict_with_file(digest, key, loaded, image)
    decision_metrics(out["score"], loaded.threshold, None)
    # The run's pixel slider is on the run's scale: a model file's region is drawn at its own "hottest
    # hold-out normal pixel".
    display = loaded.map_display
    own = {**controls, "display": display, "pixel": None if display is None else display["high"]}
    show_views(image, out["map"], None, own, (lambda: out["reconstruction"]) if out["reconstruction"] is not None else None)


# --- the page -----------------------------------------------------------------------------------

st.title("Inspect")
run = common.pick_run("inspect", maps=True)
ctx = common.score_context(run, None)  # maps and reconstructions are the method's: so is the score here
threshold = common.chosen_threshold(run, None, ctx.scores)
title = get_method_class(run.method_name).title or run.method_name
note = f"Scores, maps and the decision are {title}'s own, at threshold {threshold.value:.4g} ({threshold.how})."
if common.scorer_choice(run) is not None:
    note += " The Scores page scores this run with an embedding scorer; this page does not."
st.caption(note)

row = browse(run, ctx)
controls = view_controls(run)
if row is not None:
    show_row(run, ctx, row, controls, threshold)
st.divider()
score_new_image(run, ctx, controls, threshold)
