"""Compare page: every run in one table (best value per column highlighted), chosen runs' score
distributions or ROC curves side by side, and a presentation view for showing the results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from adcore import viz
from adcore.methods import get_method_class
from adcore.runs import Run
from adcore.threshold import Threshold, format_percent, is_anomalous
from app_pages import common


BEST_STYLE = "background-color: rgba(46, 160, 67, 0.22); font-weight: 600"
VIEWS = {"distributions": "Score distributions", "roc": "ROC curves"}
MAX_PICKED = 6


@dataclass
class Entry:
    run: Run
    ctx: viz.ScoreContext
    threshold: Threshold
    point: Any  # OperatingPoint on the labelled test images, or None
    row: dict[str, Any]
    choice: dict[str, Any] | None  # the embedding scorer chosen on the Scores page, None: the method's own

    @property
    def label(self) -> str:
        return self.row["name"]


def entries() -> list[Entry]:
    root = common.runs_root()
    rows, broken = common.runs_table(root)
    if not rows:
        common.no_runs_yet(root, broken)
        st.stop()
    common.broken_runs_note(broken)
    out = []
    for r in rows:
        try:
            run = common.load_run_scores(root / r["run id"])
        except (FileNotFoundError, ValueError) as exc:  # deleted or damaged since the list was read
            st.warning(f"Run `{r['run id']}` is left out: {exc}.", icon=":material/warning:")
            continue
        choice = common.scorer_choice(run)
        ctx = common.score_context(run, choice)
        threshold = common.chosen_threshold(run, choice, ctx.scores)
        point = ctx.real.at(threshold.value) if ctx.real is not None else None
        defaults = {p.name: p.default for p in get_method_class(run.method_name).param_specs()}
        row = viz.comparison_row(run.config, run.run_id, defaults, threshold.value, point)
        out.append(Entry(run, ctx, threshold, point, row, choice))
    return out


# The runs table in two parts that each fit the page: how each run did, and how it was set up.
RESULT_COLUMNS = ("name", "data", "image AUROC", "pixel AUROC", "F1", "recall", "false alarms", "threshold")
SETUP_COLUMNS = ("name", "method", "augmentations", "key params", "image size", "device", "training s")


def runs_table(items: list[Entry]) -> None:
    rows = [e.row for e in items]
    best = viz.best_per_column(rows)

    def text(column: str, value: Any) -> str:
        if value is None:
            return "–"
        if column in ("recall", "false alarms"):
            return format_percent(value)
        if column in ("image AUROC", "pixel AUROC"):
            return f"{value:.3f}"
        if column == "F1":
            return f"{value:.2f}"
        if column == "threshold":
            return f"{value:.4g}"
        if column == "training s":
            return f"{value:.1f}"
        return str(value)

    # Shown as text so a missing value reads "–"; the green marks come from the numbers themselves.
    frame = pd.DataFrame([{c: text(c, v) for c, v in r.items()} for r in rows])

    def highlight(column: pd.Series) -> list[str]:
        return [BEST_STYLE if i in best.get(column.name, ()) else "" for i in range(len(column))]

    column_config = {
        "name": st.column_config.Column(pinned=True),
        "F1": st.column_config.Column(help="F1 on the labelled test images at each run's chosen threshold."),
        "recall": st.column_config.Column(help="Share of the labelled test defects flagged at the threshold."),
        "false alarms": st.column_config.Column(help="Share of the normal test images flagged at the threshold."),
        "threshold": st.column_config.Column(help="Each run's threshold: from the Scores page, saved, or default."),
        "key params": st.column_config.Column(help="Method parameters that differ from the method's defaults."),
    }
    for part, columns in (("results", RESULT_COLUMNS), ("setup", SETUP_COLUMNS)):
        st.dataframe(
            frame.style.apply(highlight, axis=0),
            hide_index=True,
            width="stretch",
            column_order=columns,
            column_config=column_config,
            key=f"compare.table.{part}",
        )
    st.caption(
        "Green: the best of each column among runs on the same data (highest AUROC, F1 and recall; fewest false "
        "alarms; fastest training); runs on different data are not comparable, so none of them is marked against "
        "the others. F1, recall and false alarms are at each run's chosen threshold (Scores page), on its labelled "
        "test images."
    )


def big_numbers(entry: Entry) -> None:
    p, row = entry.point, entry.row
    with st.container(horizontal=True):
        st.metric("Image AUROC", "–" if row["image AUROC"] is None else f"{row['image AUROC']:.3f}", border=True)
        if p is not None:
            st.metric("Defects caught", f"{p.tp} of {p.tp + p.fn}", border=True)
            st.metric("False alarms", f"{p.fp} of {p.fp + p.tn}", border=True)
        else:
            ref = entry.ctx.scores[entry.ctx.reference_rows]
            flagged = int(is_anomalous(ref, entry.threshold.value).sum())
            st.metric("Hold-out normals flagged", f"{flagged} of {ref.size}", border=True)


def side_by_side(items: list[Entry], view: str, presentation: bool) -> None:
    if view == "roc":
        curves, synthetic_only = {}, []
        for e in items:
            table, _ = e.ctx.evaluation
            if table is None:
                continue
            if e.ctx.real is None:
                synthetic_only.append(e.label)
                curves[f"{e.label} (synthetic defects)"] = (table.roc, table.at(e.threshold.value))
            else:
                curves[e.label] = (table.roc, e.point)
        if not curves:
            st.info("None of these runs has labelled or synthetic defects to draw a ROC curve from.")
            return
        if presentation:
            columns = st.columns(len(items))
            for col, e in zip(columns, items):
                with col:
                    st.subheader(e.label)
                    big_numbers(e)
        st.plotly_chart(viz.roc_overlay_figure(curves, height=560 if presentation else 440), key="compare.roc")
        if synthetic_only:
            names = ", ".join(synthetic_only)
            st.caption(f"{names}: no labelled defects, so the curve is against synthetic defects (not real).")
        return
    per_row = min(len(items), 3)
    for start in range(0, len(items), per_row):
        for col, e in zip(st.columns(per_row), items[start : start + per_row]):
            with col:
                st.subheader(e.label)
                if presentation:
                    big_numbers(e)
                else:
                    st.caption(f"{e.row['method']} · threshold {e.threshold.value:.4g} ({e.threshold.how})")
                groups = [g for g in e.ctx.order if g != "train normal"]
                height = 480 if presentation else 360
                chart = viz.score_distribution_chart(e.ctx, e.threshold.value, groups, height=height)
                st.vega_lite_chart(spec=chart, key=f"compare.dist.{e.run.run_id}", width="stretch")


def hand_off(items: list[Entry], default: str | None) -> None:
    """Download one run as a model file (for ``python -m adcore score --model``) or an HTML report,
    both with the scorer and threshold chosen on the Scores page."""
    st.subheader("Export the model and a report")
    ids = [e.run.run_id for e in items]
    by_id = {e.run.run_id: e for e in items}
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    run_id = c1.selectbox(
        "Run", ids, index=ids.index(default) if default in ids else 0, format_func=lambda i: by_id[i].label,
        key="compare.handoff",
    )  # fmt: skip
    entry = by_id[run_id]
    stem = entry.run.run_id
    with c2:
        st.download_button(
            "Model file", data=lambda: model_file(entry), file_name=f"{stem}.adcore",
            mime="application/octet-stream", icon=":material/download:", on_click="ignore", width="stretch",
            help="One file with the weights (safetensors), preprocessing, scorer and threshold. Score a folder "
            "with `python -m adcore score --model FILE --images DIR --out scores.csv`, or load it on Inspect.",
        )  # fmt: skip
    with c3:
        st.download_button(
            "HTML report", data=lambda: report_html(entry), file_name=f"{stem}-report.html", mime="text/html",
            icon=":material/description:", on_click="ignore", width="stretch",
            help="One self-contained page (no network needed) with the set-up, metrics, threshold, plots and the "
            "most anomalous images with their heat maps: for people without the dashboard.",
        )  # fmt: skip
    st.caption(
        f"Both use {common.scorer_title(entry.choice)} and the threshold {entry.threshold.value:.4g} "
        f"({entry.threshold.how}); change them on the Scores page."
    )


def model_file(entry: Entry) -> bytes:
    from adcore.export import ScorerSpec, export_bytes

    run = common.load_run_cached(entry.run.path)
    spec = None if entry.choice is None else ScorerSpec(entry.choice["name"], dict(entry.choice.get("params") or {}))
    return export_bytes(run, threshold=entry.threshold, scorer=spec)


def report_html(entry: Entry) -> str:
    from adcore.report import build_report

    run = common.load_run_cached(entry.run.path)
    return build_report(run, scores=entry.ctx.scores, threshold=entry.threshold,
                        scored_by=common.scorer_title(entry.choice))  # fmt: skip


# --- the page -----------------------------------------------------------------------------------

title_col, toggle_col = st.columns([4, 1], vertical_alignment="bottom")
title_col.title("Compare runs")
with toggle_col:
    presentation = common.remembered(
        st.toggle, "Presentation view", key="compare.presentation", value=False,
        help="Hide the table and controls: big numbers and plots of the chosen runs, for showing the results.",
    )  # fmt: skip

items = entries()
ids = [e.run.run_id for e in items]
by_id = {e.run.run_id: e for e in items}
first = [st.session_state.get("selected_run")] if st.session_state.get("selected_run") in ids else []
newest = first + [i for i in ids if i not in first][: 2 - len(first)]  # the selected run and the newest other
default = [i for i in common.kept("compare.runs", newest) if i in ids]

if presentation:
    picked = default
    view = common.kept("compare.view", "distributions")
else:
    runs_table(items)
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    picked = common.keep("compare.runs", c1.multiselect(
        "Runs side by side", ids, default=default, format_func=lambda i: by_id[i].label,
        max_selections=MAX_PICKED, key="compare.runs",
    ))  # fmt: skip
    view = common.keep("compare.view", c2.segmented_control(
        "Show", list(VIEWS), default=common.kept("compare.view", "distributions"), format_func=VIEWS.get,
        key="compare.view",
    ) or "distributions")  # fmt: skip

chosen = [by_id[i] for i in picked]
data_sets = sorted({str(e.row["data"]) for e in chosen})
if len(data_sets) > 1:  # in the presentation view too: the audience must not read it as a ranking
    st.warning(
        f"Not comparable: these runs were trained and tested on different data ({', '.join(data_sets)}), "
        "so their numbers say how each did on its own data, not which method is better.",
        icon=":material/warning:",
    )
if len(items) < 2:
    st.info("There is one run so far: train another (other method, augmentations or size) to compare them.")
    if chosen:
        side_by_side(chosen, view, presentation)
elif len(chosen) < 2:
    hint = " Leave the presentation view to pick them." if presentation else ""
    st.info("Pick two or more runs to see them side by side." + hint)
else:
    side_by_side(chosen, view, presentation)

if not presentation:
    hand_off(items, st.session_state.get("selected_run") or (picked[0] if picked else None))
