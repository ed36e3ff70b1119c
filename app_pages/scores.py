"""Scores & threshold page: how well the scores separate normal from defect, and where to draw the line.

Everything here reads the run's stored scores; a threshold move only recomputes counts and figures
(``adcore.viz.threshold_view``, inside a fragment so the rest of the page does not rerun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from adcore import viz
from adcore.methods import get_method_class
from adcore.projection import score_history
from adcore.files import describe_os_error
from adcore.runs import Run, update_config
from adcore.scoring import SCORERS
from adcore.threshold import (
    DEFAULT_FALSE_ALARM_RATE,
    Threshold,
    f1_optimal_threshold,
    false_alarm_estimate,
    format_percent,
    same_scores,
    saved_threshold,
    saved_threshold_note,
    synthetic_caveat,
    threshold_for_false_alarm_rate,
    threshold_for_recall,
)
from app_pages import common


BY_TARGET = "False-alarm target"
BY_VALUE = "Score value"
MAX_TARGET_PERCENT = 50.0
TARGET_STEP = 0.5


def scorer_picker(run: Run) -> dict[str, Any] | None:
    """The image score to threshold: the method's own, or an embedding scorer (runs with embeddings)."""
    if "embedding" not in run.results:
        return None
    current = common.scorer_choice(run)
    options = ["", *SCORERS.names()]
    method_title = get_method_class(run.method_name).title or run.method_name
    name = st.selectbox(
        "Image score",
        options,
        index=options.index(current["name"]) if current else 0,
        format_func=lambda n: f"The method's own score ({method_title})" if not n else f"{n}: {SCORERS.get(n).help}",
        key=f"scores.{run.run_id}.scorer",
        help="An embedding scorer re-scores the run's stored embeddings (fitted on the training normals): "
        "no retraining. Saving the threshold also saves the scorer, so an export scores the same way.",
    )
    if not name:
        common.set_scorer_choice(run, None)
        return None
    entry = SCORERS.get(name)
    values = current["params"] if current and current["name"] == name else None
    params = {}
    if entry.params:
        with st.expander("Scorer parameters"):
            params = common.param_inputs(entry.params, f"scores.{run.run_id}.scorer.{name}", values, columns=3)
    choice = {"name": name, "params": params}
    try:
        common.run_scores(run, choice)
    except ValueError as exc:
        st.error(f"The {name} scorer cannot score this run: {exc}. Showing the method's own score.")
        choice = None
    common.set_scorer_choice(run, choice)
    return choice


def manual_threshold(ctx: viz.ScoreContext, value: float) -> Threshold:
    """A threshold set by hand with the slider, with what it means on the reference normals."""
    estimate = false_alarm_estimate(ctx.scores[ctx.reference_rows], value, source=ctx.reference_source)
    return Threshold(
        value=value,
        how=f"set by hand on the Scores page: flags {estimate.flagged} of {estimate.n} {ctx.reference_source}",
        details={"rule": "manual", **estimate.to_dict(), "warnings": list(estimate.warnings)},
    )


def target_threshold(ctx: viz.ScoreContext, rate: float) -> Threshold:
    threshold = threshold_for_false_alarm_rate(ctx.scores[ctx.reference_rows], rate, source=ctx.reference_source)
    if ctx.reference_warning:
        threshold.details["warnings"].insert(0, ctx.reference_warning)
    return threshold


def initial_controls(threshold: Threshold) -> tuple[str, float]:
    """Which control drives at first, and the target (percent) it starts from."""
    if threshold.details.get("rule") == "false_alarm_rate":
        return BY_TARGET, float(threshold.details.get("target_rate", DEFAULT_FALSE_ALARM_RATE)) * 100
    return BY_VALUE, DEFAULT_FALSE_ALARM_RATE * 100


def drive_with(prefix: str, threshold: Threshold | None = None, target_percent: float | None = None) -> None:
    """Button callback: make the controls under ``prefix`` show ``threshold`` (by value) or a target."""
    if threshold is not None:
        common.preset(f"{prefix}.mode", BY_VALUE)
        common.preset(f"{prefix}.value", threshold.value)
        st.session_state[f"{prefix}.origin"] = threshold.to_dict()
    else:
        common.preset(f"{prefix}.mode", BY_TARGET)
        common.preset(f"{prefix}.target", target_percent)


def percent(rate: float | None) -> str:
    return "–" if rate is None else format_percent(rate)


@st.fragment
def threshold_panel(run: Run, ctx: viz.ScoreContext, choice: dict[str, Any] | None) -> None:
    prefix = f"scores.{run.run_id}.{choice['name'] if choice else 'method'}"
    start = common.chosen_threshold(run, choice, ctx.scores)
    start_mode, start_target = initial_controls(start)
    span = viz.threshold_slider_range(ctx.scores)
    n_ref = ctx.reference_rows.size

    modes = [BY_TARGET, BY_VALUE]
    mode = common.keep(
        f"{prefix}.mode",
        st.radio(
            "Set the threshold by",
            modes,
            index=modes.index(common.kept(f"{prefix}.mode", start_mode)),
            horizontal=True,
            key=f"{prefix}.mode",
            help=f"False-alarm target: the threshold follows from the share of the {n_ref} "
            f"{ctx.reference_source} you accept to flag. Score value: drag the line yourself.",
        ),
    )
    value_col, target_col = st.columns(2, gap="large")
    value_label = "Threshold (anomaly score; flagged at or above)"
    target_label = f"Target false-alarm rate (% of the {n_ref} {ctx.reference_source})"
    target_args = (0.0, MAX_TARGET_PERCENT)
    if mode == BY_TARGET:
        with target_col:
            target = common.remembered(
                st.slider, target_label, *target_args, step=TARGET_STEP, format="%.1f %%",
                key=f"{prefix}.target", value=common.kept(f"{prefix}.target", start_target),
            )  # fmt: skip
        threshold = target_threshold(ctx, target / 100)
        common.keep(f"{prefix}.value", span.clip(threshold.value))
        with value_col:  # shows the implied value; keyless, so it simply follows
            st.slider(value_label, span.low, span.high, span.clip(threshold.value), step=span.step,
                      format=span.format, disabled=True)  # fmt: skip
    else:
        with value_col:
            value = common.remembered(
                st.slider, value_label, span.low, span.high, step=span.step, format=span.format,
                key=f"{prefix}.value", value=span.clip(common.kept(f"{prefix}.value", start.value)),
            )  # fmt: skip
        origin = st.session_state.get(f"{prefix}.origin")
        if origin is None and value == span.clip(start.value):
            origin = start.to_dict()
        threshold = Threshold.from_dict(origin) if origin and origin["value"] == value else manual_threshold(ctx, value)
        implied = 100 * false_alarm_estimate(ctx.scores[ctx.reference_rows], value).observed_rate
        implied = min(MAX_TARGET_PERCENT, round(implied / TARGET_STEP) * TARGET_STEP)
        common.keep(f"{prefix}.target", implied)
        with target_col:
            st.slider(target_label, *target_args, implied, step=TARGET_STEP, format="%.1f %%", disabled=True)

    common.set_chosen_threshold(run, choice, threshold)

    # Shortcuts and saving.
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.button(
            f"Default: {format_percent(DEFAULT_FALSE_ALARM_RATE)} false alarms",
            key=f"{prefix}.default", on_click=drive_with, args=(prefix, None, DEFAULT_FALSE_ALARM_RATE * 100),
            help=f"A {format_percent(DEFAULT_FALSE_ALARM_RATE)} false-alarm target on the {ctx.reference_source}.",
        )  # fmt: skip
        if ctx.real is not None:
            best = f1_optimal_threshold(ctx.real.scores, ctx.real.is_anomaly)
            st.button(
                "Best F1", key=f"{prefix}.f1", on_click=drive_with, args=(prefix, best),
                help="The threshold with the best F1 on the labelled test images (optimistic: chosen on them).",
            )  # fmt: skip
            recall = common.remembered(
                st.number_input, "Required recall (%)", min_value=1.0, max_value=100.0, step=5.0,
                key=f"{prefix}.recall", value=90.0, width=170,
            )  # fmt: skip
            needed = threshold_for_recall(ctx.real.scores, ctx.real.is_anomaly, recall / 100)
            st.button(
                f"Catch at least {recall:g} %", key=f"{prefix}.for_recall", on_click=drive_with, args=(prefix, needed),
                help="The highest threshold that still catches this share of the test defects.",
            )  # fmt: skip
        save = st.button(
            "Save threshold", type="primary", icon=":material/save:", key=f"{prefix}.save",
            help="Store this threshold (and the image score it is for) with the run: export uses it.",
        )  # fmt: skip
    if save:
        try:
            update_config(run.path, threshold=threshold.to_dict(), scorer=choice)
        except OSError as exc:  # a full disk, a read-only or vanished run folder: the saved one stays
            st.error(f"The threshold could not be saved: {describe_os_error(exc)}.", icon=":material/error:")
        else:
            st.toast(f"Threshold {threshold.value:.4g} saved with the run.", icon=":material/check_circle:")
            st.rerun()  # the whole page: the run's config has changed
    saved, saved_scorer = saved_threshold(run)
    if saved is None:
        st.caption("Not saved yet: export would use the default threshold.")
    elif not same_scores(saved_scorer, choice):
        st.caption(f"{saved_threshold_note(run, choice)} Press Save threshold to save this one with these scores.")
    elif saved.value == threshold.value:
        st.caption(":material/check_circle: This threshold is saved with the run.")
    else:
        st.caption(f"The run has {saved.value:.4g} saved ({saved.how}); press Save threshold to replace it.")

    numbers = st.container()  # filled below, once the plot's own switch has been read
    show_train = common.remembered(
        st.checkbox, "Plot the training normals too (the model has seen them: they score low)",
        key=f"{prefix}.show_train", value=False,
    )  # fmt: skip
    distribution = st.container()  # above the curves' switch
    table, label = ctx.evaluation
    # The curves are off at first: three figures cost a page open more than its 1 s budget.
    curves = table is not None and common.remembered(
        st.toggle, "ROC and precision–recall curves", key="scores.curves", value=False,
        help=f"How recall, false alarms and precision trade off over every threshold, with this one marked: "
        f"{label}.",
    )  # fmt: skip
    view = viz.threshold_view(
        ctx, threshold.value, chosen_from_reference=mode == BY_TARGET, show_train=show_train, curves=curves, vega=True
    )
    with numbers:
        show_reliability(ctx, threshold, view)
        show_metrics(ctx, view)
    distribution.vega_lite_chart(spec=view.distribution, key=f"{prefix}.distribution", width="stretch")
    if view.roc is not None:
        roc_col, pr_col = st.columns(2)
        roc_col.vega_lite_chart(spec=view.roc, key=f"{prefix}.roc", width="stretch")
        pr_col.vega_lite_chart(spec=view.pr, key=f"{prefix}.pr", width="stretch")
        if not ctx.has_real_defects:
            st.caption("Both curves use synthetic defects pasted onto the hold-out normals, not real defects.")
    show_gallery(run, ctx, view, prefix)


def show_reliability(ctx: viz.ScoreContext, threshold: Threshold, view: viz.ThresholdView) -> None:
    st.markdown(f"**Threshold {threshold.value:.4g}** · {threshold.how}")
    st.info(view.estimate.sentence, icon=":material/verified:")
    warnings = list(dict.fromkeys([*threshold.details.get("warnings", []), *view.estimate.warnings]))
    for warning in warnings:
        if "Chosen on the same labelled images" in warning:
            st.caption(warning)  # true of every labelled threshold: a note, not an alarm
        else:
            st.warning(warning, icon=":material/warning:")


def show_hit_rate(metrics: dict) -> None:
    """Where the masks are known: how often the heat map's hottest pixel is on the defect."""
    if metrics.get("hit_rate") is None:
        return
    n = metrics.get("hit_rate_images") or 0
    hits = round(metrics["hit_rate"] * n)
    with st.container(horizontal=True):
        st.metric(
            "Heat map on the defect", f"{hits} of {n}" if n else f"{metrics['hit_rate']:.0%}", border=True,
            help="Defect photos whose hottest heat-map pixel lies on the defect's mask (within 3 px): does "
            "the map point where an inspector should look? Independent of the threshold.",
        )
        if metrics.get("pixel_pro") is not None:
            st.metric("Region overlap (PRO, 30 %)", f"{metrics['pixel_pro']:.2f}", border=True,
                      help="Area under the per-region-overlap curve up to a 30 % false-positive rate, as in "
                      "the MVTec AD evaluation: 1 is perfect; each defect region counts the same.")


def show_metrics(ctx: viz.ScoreContext, view: viz.ThresholdView) -> None:
    real = [r for r in view.recalls if not r.synthetic]
    synthetic = [r for r in view.recalls if r.synthetic]
    if ctx.has_real_defects:
        p = view.point
        st.subheader("On the labelled test images")
        matrix_col, metrics_col = st.columns([2, 3], gap="large")
        with matrix_col:
            st.table(viz.confusion_table(p))
            st.caption(f"{p.tp + p.fn} defect and {p.fp + p.tn} normal test images.")
        with metrics_col:
            with st.container(horizontal=True):
                st.metric("False alarms", f"{p.fp} of {p.fp + p.tn}", help="Normal test images flagged.", border=True)
                st.metric("Missed defects", f"{p.fn} of {p.tp + p.fn}", border=True)
            with st.container(horizontal=True):
                st.metric("False-alarm rate", percent(p.false_alarm_rate))
                st.metric("Miss rate", percent(p.miss_rate))
                st.metric("Precision", percent(p.precision), help="Of the flagged images, the share that are defects.")
                st.metric("Recall", percent(p.recall), help="Of the defects, the share flagged.")
                st.metric("F1", "–" if p.f1 is None else f"{p.f1:.2f}")
            show_hit_rate(ctx.run.config.get("metrics") or {})
        with st.expander("Per defect class, with 95 % intervals"):
            for r in real:
                st.markdown(f"- {r.sentence}")
    else:
        st.subheader("Only normal images so far")
        rows = {r["group"]: r for r in view.group_rows}
        with st.container(horizontal=True):
            for group in ("hold-out normal", "test normal"):
                if group in rows:
                    st.metric(f"{group.capitalize()}s flagged", f"{rows[group]['flagged']} of {rows[group]['images']}",
                              help="Normal images flagged are false alarms.", border=True)  # fmt: skip
            if synthetic:
                caught, n = sum(r.caught for r in synthetic), sum(r.n for r in synthetic)
                st.metric(
                    "Synthetic defects caught", f"{caught} of {n}", border=True,
                    help="CutPaste and scar patches pasted onto the hold-out normals: not real defects.",
                )  # fmt: skip
    if synthetic:
        with st.container(border=True):
            st.markdown(
                "**Synthetic recall** · a first estimate before any real defect has been collected. "
                "These are patches pasted onto the hold-out normal images, not real defects: real "
                "defects can be easier or much harder to catch."
            )
            for r in synthetic:
                st.markdown(f"- {r.sentence}")
            caveat = synthetic_caveat(ctx.run)
            if caveat:
                st.warning(caveat, icon=":material/warning:")
    # A plain table: an interactive data grid costs a page open 0.2 s in the browser, for a few rows.
    st.table(
        pd.DataFrame([{**r, "share flagged": percent(r["share flagged"])} for r in view.group_rows]),
        hide_index=True,
    )


def show_gallery(run: Run, ctx: viz.ScoreContext, view: viz.ThresholdView, prefix: str) -> None:
    st.subheader("Images to look at")
    titles = list(view.gallery)
    counts = [f"{total} {title[0].lower()}{title[1:]}" for title, (_, total) in view.gallery.items()
              if not title.startswith("Nearest")]  # fmt: skip
    st.caption("At this threshold: " + " · ".join(counts) + ".")
    # Only the open tab's thumbnails are drawn (a slider move redraws them all otherwise). Labels
    # without counts: a label that changed with the threshold would send the reader back to the first tab.
    tabs = st.tabs(titles, key=f"{prefix}.gallery_tab", on_change="rerun")
    for i, (tab, title) in enumerate(zip(tabs, titles)):
        if not tab.open:
            continue
        rows, total = view.gallery[title]
        with tab:
            if not len(rows):
                st.caption("None at this threshold.")
                continue
            if total > len(rows) and not title.startswith("Nearest"):
                st.caption(f"The {len(rows)} furthest from the threshold of {total}.")
            common.show_rows(run, ctx, rows, key=f"{prefix}.gallery{i}")


def few_shot(run: Run, ctx: viz.ScoreContext) -> None:
    """A random forest on histograms of the heat maps, cross-validated over the labelled images."""
    if not ctx.has_real_defects:
        st.caption("Once some labelled defect images are in the test set, a classifier can learn from their heat "
                   "maps here and be measured by cross-validation.")  # fmt: skip
        return
    st.caption(
        "Learns from the labelled hold-out and test images (never the training images) with a random forest on "
        "histograms of their heat maps. Each image is scored by a forest fitted on the other folds only, so the "
        "AUROC below is honest; compare it with the run's own score on the same images."
    )
    asked = st.session_state.setdefault("scores.fewshot_runs", set())
    if st.button("Cross-validate a classifier on the heat maps", key="scores.fewshot"):
        asked.add(run.run_id)  # kept, so the result stays while the threshold is moved
    if run.run_id not in asked:
        return
    try:
        result = few_shot_result(str(run.path), common.run_version(run))
    except ValueError as exc:
        st.warning(str(exc), icon=":material/info:")
        return
    with st.container(horizontal=True):
        st.metric("Classifier AUROC (out of fold)", auroc_text(result["auroc"]), border=True)
        st.metric("The run's own score, same images", auroc_text(result["baseline"]), border=True)
    st.dataframe(result["folds"], hide_index=True)


@st.cache_data(show_spinner="Cross-validating a random forest on the heat maps…", max_entries=8)
def few_shot_result(path: str, version: int) -> dict[str, Any]:
    from adcore.fewshot import cross_validate

    result = cross_validate(common.load_run_cached(Path(path)).results)
    folds = [{"fold": f["fold"] + 1, "fitted on": f["n_fit"], "scored": f["n_scored"], "defects scored":
              f["defects_scored"], "AUROC": f["auroc"]} for f in result.folds]  # fmt: skip
    return {"auroc": result.image_auroc, "baseline": result.baseline_auroc, "folds": folds}


def auroc_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# --- the page -----------------------------------------------------------------------------------

st.title("Scores & threshold")
run_col, scorer_col = st.columns([3, 2])
with run_col:
    run = common.pick_run("scores")
with scorer_col:
    choice = scorer_picker(run)
ctx = common.score_context(run, choice)

n_ref = ctx.reference_rows.size
if ctx.reference_warning:
    st.warning(ctx.reference_warning, icon=":material/warning:")
if ctx.has_real_defects:
    st.caption(
        f"Scored with {common.scorer_title(choice)}. The threshold can follow a false-alarm target on the "
        f"{n_ref} {ctx.reference_source}, be dragged by hand, or be fitted to the labelled test defects."
    )
else:
    st.info(
        f"This run has **only normal images** (no labelled defects in its data). The threshold is set from "
        f"the {n_ref} {ctx.reference_source}: you choose how many false alarms to accept, and the page says "
        "how sure that is. What it would catch is estimated on synthetic defects until real ones are collected.",
        icon=":material/info:",
    )

threshold_panel(run, ctx, choice)

st.subheader("Scores during training")
history = score_history(run)
if history is None:
    st.caption(
        "This run recorded no scores during training: its method fits in one pass (like PatchCore) or does not "
        "record them (contrastive and CutPaste score only once their Gaussian is fitted), or no normal images "
        "were held out to score."
    )
else:
    st.caption(
        "Hold-out normal images and synthetic defects pasted onto them, scored by the model as it was after "
        "those epochs: the boxes should move apart as training goes on. Early scores may be on another scale "
        "than the final ones (a method may calibrate its maps once training ends)."
    )
    st.vega_lite_chart(spec=viz.score_history_chart(history), key="scores.history", width="stretch")

st.subheader("With a few labelled defects")
few_shot(run, ctx)
