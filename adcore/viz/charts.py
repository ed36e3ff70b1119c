"""Vega-Lite (Altair) versions of the score figures the dashboard's pages draw on opening: the score
distributions by group with the threshold, and the ROC and precision-recall curves.

Why not the plotly figures of ``figures``: a browser tab evaluates plotly.js (several MB) the first time
it draws a plotly figure, about 1.2 s on 2 CPU cores, so the first page with a figure took over 2 s to
open. Vega-Lite starts in 0.1-0.3 s. The self-contained HTML report keeps the plotly figures (plotly.js
is inlined there, and nothing waits on it); the Embeddings map stays plotly for its lasso selection.
Both draw the same data with the same colours, symbols, clipping and sampling (``figures``' helpers).
"""

from __future__ import annotations

from typing import Any, Sequence

import altair as alt
import numpy as np
import pandas as pd
from sklearn.metrics import auc

from adcore.viz.figures import (
    MAX_BOX_POINTS,
    THRESHOLD_COLOR,
    _score_axis,
    _thin,
    group_colors,
    group_kind,
    group_label,
)

FLAGGED_FILL = "#d62728"  # the flagged side of the threshold, drawn faintly
CURVE_COLOR = "#2f6fb0"
POINT_COLOR = "#d62728"
ROW_PX = 46  # height per group row


def _box_stats(values: np.ndarray) -> dict[str, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": q1, "median": median, "q3": q3, "low": inside.min(), "high": inside.max()}


def score_distribution_chart(
    ctx: Any, threshold: float | None, groups: Sequence[str] | None = None, *, height: int = 380
) -> alt.LayerChart:
    """Scores of each group as a box (quartiles, whiskers at 1.5 IQR) with its images as jittered
    points, one row per group, and the threshold as a dashed line over a shaded "flagged" side.
    ``ctx`` is a ``score_view.ScoreContext``. A group of more than ``MAX_BOX_POINTS`` images shows
    only its outliers as points; the boxes are computed here, on every score."""
    groups = list(ctx.order if groups is None else groups)
    colours = group_colors(ctx.order)
    rng = np.random.default_rng(0)
    boxes, points = [], []
    for group in groups:
        rows = ctx.rows[group]
        if not rows.size:
            continue
        values = ctx.scores[rows]
        label = group_label(group, int(rows.size))
        stats = _box_stats(values)
        boxes.append({"group": label, **stats})
        if rows.size > MAX_BOX_POINTS:  # outliers only, as the box plot draws them
            iqr = stats["q3"] - stats["q1"]
            rows = rows[(values < stats["q1"] - 1.5 * iqr) | (values > stats["q3"] + 1.5 * iqr)]
            rows = rows[:MAX_BOX_POINTS]
        for i, jitter in zip(rows, rng.uniform(-0.3, 0.3, rows.size)):
            points.append({"group": label, "score": float(ctx.scores[i]), "name": ctx.names[i], "jitter": jitter,
                           "synthetic": group_kind(group) == "synthetic"})  # fmt: skip
    labels = [b["group"] for b in boxes]
    label_colours = [colours[g] for g in groups if ctx.rows[g].size]
    low, high, beyond = _score_axis(ctx, groups, threshold)
    pad = 0.04 * (high - low) or 1.0
    domain = [low - pad, high + pad]
    title = "anomaly score (higher = more anomalous)"
    x_axis = alt.Axis(title=[title, f"{beyond} lie further right"] if beyond else title, titlePadding=8)
    x_scale = alt.Scale(domain=domain, nice=False, zero=False)
    y = alt.Y("group:N", sort=labels, title=None, axis=alt.Axis(labelLimit=260, labelFontSize=12))
    colour = alt.Color("group:N", scale=alt.Scale(domain=labels, range=label_colours), legend=None)

    box_data = alt.Data(values=_records(boxes))
    whisker = alt.Chart(box_data).mark_rule(strokeWidth=1.5, clip=True).encode(
        x=alt.X("low:Q", scale=x_scale, axis=x_axis), x2="high:Q", y=y, color=colour
    )
    box = alt.Chart(box_data).mark_bar(size=24, opacity=0.18, stroke="black", strokeWidth=0.5, clip=True).encode(
        x=alt.X("q1:Q", scale=x_scale, axis=x_axis), x2="q3:Q", y=y, color=colour,
        tooltip=[alt.Tooltip("group:N"), alt.Tooltip("median:Q", format=".4g"), alt.Tooltip("q1:Q", format=".4g"),
                 alt.Tooltip("q3:Q", format=".4g")],
    )  # fmt: skip
    median = alt.Chart(box_data).mark_tick(size=24, thickness=2, clip=True).encode(
        x=alt.X("median:Q", scale=x_scale, axis=x_axis), y=y, color=colour
    )
    dots = alt.Chart(alt.Data(values=_records(points))).mark_point(filled=True, size=36, opacity=0.8, clip=True).encode(
        x=alt.X("score:Q", scale=x_scale, axis=x_axis), y=y, color=colour,
        yOffset=alt.YOffset("jitter:Q", scale=alt.Scale(domain=[-0.5, 0.5])),
        shape=alt.Shape("synthetic:N", scale=alt.Scale(domain=[False, True], range=["circle", "diamond"]), legend=None),
        tooltip=[alt.Tooltip("name:N", title="image"), alt.Tooltip("group:N"), alt.Tooltip("score:Q", format=".4g")],
    )  # fmt: skip
    layers = [*_threshold_layers(threshold, domain, x_scale, x_axis), whisker, box, median, dots]
    chart = alt.layer(*layers).properties(
        height=max(height, 60 + ROW_PX * len(labels)) - 70, width="container",
        title=alt.TitleParams("Anomaly scores by group", fontSize=14, anchor="start", offset=22),
    )  # fmt: skip
    return chart


def _threshold_layers(threshold: float | None, domain: list[float], x_scale: alt.Scale, x_axis: alt.Axis) -> list:
    if threshold is None:
        return []
    t = float(min(max(threshold, domain[0]), domain[1]))
    data = alt.Data(values=[{"t": t, "right": domain[1], "text": f"threshold {threshold:.4g} → flagged"}])
    shade = alt.Chart(data).mark_rect(opacity=0.06, color=FLAGGED_FILL).encode(
        x=alt.X("t:Q", scale=x_scale, axis=x_axis), x2="right:Q"
    )
    line = alt.Chart(data).mark_rule(strokeDash=[6, 4], strokeWidth=2, color=THRESHOLD_COLOR).encode(
        x=alt.X("t:Q", scale=x_scale, axis=x_axis)
    )
    left_half = t < (domain[0] + domain[1]) / 2  # the label on the side with room for it
    label = alt.Chart(data).mark_text(  # above the plot area, where it covers no point
        align="left" if left_half else "right", dx=5 if left_half else -5, baseline="bottom", y=-4, fontSize=12
    ).encode(x=alt.X("t:Q", scale=x_scale, axis=x_axis), text="text:N")
    return [shade, line, label]


def _records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready rows (numpy numbers as Python floats and bools)."""
    out = []
    for row in rows:
        out.append({k: (float(v) if isinstance(v, (np.floating, float)) else bool(v) if isinstance(v, np.bool_) else v)
                    for k, v in row.items()})  # fmt: skip
    return out


def roc_chart(curve: Any, point: Any, label: str = "", *, height: int = 340) -> alt.LayerChart:
    """ROC curve (false-alarm rate vs recall) with the current operating point marked."""
    keep = _thin(curve.false_alarm_rate.size)
    area = auc(curve.false_alarm_rate, curve.recall)
    frame = pd.DataFrame({"x": curve.false_alarm_rate[keep], "y": curve.recall[keep]})
    marked = None
    if point is not None and point.false_alarm_rate is not None and point.recall is not None:
        marked = (point.false_alarm_rate, point.recall)
    return _curve_chart(frame, [0, 1], [0, 1], marked, f"ROC · AUROC {area:.3f}", label,
                        ("false-alarm rate", "false alarms"), ("recall (defects caught)", "recall"), height)  # fmt: skip


def pr_chart(curve: Any, point: Any, label: str = "", *, height: int = 340) -> alt.LayerChart:
    """Precision-recall curve with the current operating point marked, and the no-skill level."""
    keep = _thin(curve.recall.size)
    prevalence = float(curve.precision[0]) if curve.precision.size else 0.0  # at the lowest threshold
    frame = pd.DataFrame({"x": curve.recall[keep], "y": curve.precision[keep]})
    marked = None
    if point is not None and point.precision is not None and point.recall is not None:
        marked = (point.recall, point.precision)
    return _curve_chart(frame, [0, 1], [prevalence, prevalence], marked, "Precision vs recall", label,
                        ("recall (defects caught)", "recall"), ("precision (flags: defects)", "precision"),
                        height)  # fmt: skip


def _curve_chart(frame: pd.DataFrame, chance_x: list[float], chance_y: list[float], marked: tuple | None,
                 title: str, label: str, x: tuple[str, str], y: tuple[str, str], height: int) -> alt.LayerChart:  # fmt: skip
    scale = alt.Scale(domain=[-0.02, 1.02], nice=False)
    x_enc = alt.X("x:Q", scale=scale, axis=alt.Axis(title=x[0], format=".0%", titlePadding=8))
    y_enc = alt.Y("y:Q", scale=scale, axis=alt.Axis(title=y[0], format=".0%", titlePadding=8))
    tooltip = [alt.Tooltip("x:Q", title=x[1], format=".1%"), alt.Tooltip("y:Q", title=y[1], format=".1%")]
    chance = alt.Chart(pd.DataFrame({"x": chance_x, "y": chance_y})).mark_line(
        color="#bbbbbb", strokeDash=[2, 3]
    ).encode(x=x_enc, y=y_enc)
    line = alt.Chart(frame).mark_line(strokeWidth=2, color=CURVE_COLOR).encode(x=x_enc, y=y_enc, tooltip=tooltip)
    layers = [chance, line]
    if marked is not None:
        dot = pd.DataFrame({"x": [float(marked[0])], "y": [float(marked[1])]})
        layers.append(alt.Chart(dot).mark_point(filled=True, size=160, color=POINT_COLOR, stroke="white",
                                                strokeWidth=2, opacity=1).encode(x=x_enc, y=y_enc, tooltip=tooltip))  # fmt: skip
    return alt.layer(*layers).properties(
        height=height - 70, width="container",
        title=alt.TitleParams(f"{title} · {label}" if label else title, fontSize=13, anchor="start", limit=0),
    )


def score_history_chart(history: dict[str, np.ndarray], *, height: int = 360) -> alt.LayerChart:
    """Score distributions per training epoch (``adcore.projection.score_history``): a box per group
    and epoch (quartiles, whiskers at 1.5 IQR), the groups side by side within each epoch."""
    groups = list(dict.fromkeys(history["group"].tolist()))
    colours = group_colors(groups)
    boxes = []
    for epoch in sorted(set(history["epoch"].tolist())):
        for group in groups:
            values = history["score"][(history["epoch"] == epoch) & (history["group"] == group)]
            if values.size:
                boxes.append({"epoch": int(epoch), "group": group_label(group), **_box_stats(values)})
    labels = [group_label(g) for g in groups]
    data = alt.Data(values=_records(boxes))
    x = alt.X("epoch:O", title="epoch", axis=alt.Axis(labelAngle=0, titlePadding=8))
    offset = alt.XOffset("group:N", sort=labels)
    colour = alt.Color("group:N", sort=labels, scale=alt.Scale(domain=labels, range=[colours[g] for g in groups]),
                       legend=alt.Legend(orient="bottom", title=None, labelLimit=0))  # fmt: skip
    y_axis = alt.Axis(title="anomaly score", titlePadding=8)
    y_scale = alt.Scale(zero=False)
    whisker = alt.Chart(data).mark_rule().encode(x=x, xOffset=offset, y=alt.Y("low:Q", axis=y_axis, scale=y_scale), y2="high:Q",
                                                 color=colour)  # fmt: skip
    box = alt.Chart(data).mark_bar(opacity=0.35, stroke="black", strokeWidth=0.5).encode(
        x=x, xOffset=offset, y=alt.Y("q1:Q", axis=y_axis, scale=y_scale), y2="q3:Q", color=colour,
        tooltip=[alt.Tooltip("epoch:O"), alt.Tooltip("group:N"), alt.Tooltip("median:Q", format=".4g")],
    )  # fmt: skip
    median = alt.Chart(data).mark_tick(thickness=2, color="black").encode(
        x=x, xOffset=offset, y=alt.Y("median:Q", axis=y_axis, scale=y_scale)
    )
    return alt.layer(whisker, box, median).properties(height=height, width="container")  # the page titles it
