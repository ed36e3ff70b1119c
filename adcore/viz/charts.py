"""Vega-Lite versions of the score figures the dashboard's pages draw on opening: the score
distributions by group with the threshold, the ROC and precision-recall curves, and the scores during
training. Each function returns a Vega-Lite spec as a plain dict (``st.vega_lite_chart(spec=...)``).

Why not the plotly figures of ``figures``: a browser tab evaluates plotly.js (several MB) the first time
it draws a plotly figure, about 1.2 s on 2 CPU cores, so the first page with a figure took over 2 s to
open. Vega-Lite starts in 0.1-0.3 s. The self-contained HTML report keeps the plotly figures (plotly.js
is inlined there, and nothing waits on it); the Embeddings map stays plotly for its lasso selection.
Both draw the same data with the same colours, symbols, clipping and sampling (``figures``' helpers).

Why plain dicts rather than Altair objects: building the distribution chart with Altair and checking it
against the Vega-Lite JSON schema took 0.15-0.3 s of the server's time on every threshold move; the
dict takes about a millisecond. The specs are fixed by this module, so there is nothing for a schema
check to catch at run time (the tests draw each one).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
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

Spec = dict[str, Any]

FLAGGED_FILL = "#d62728"  # the flagged side of the threshold, drawn faintly
CURVE_COLOR = "#2f6fb0"
POINT_COLOR = "#d62728"
ROW_PX = 46  # height per group row


def _field(name: str, kind: str, **options: Any) -> dict[str, Any]:
    """An encoding channel: ``kind`` is Vega-Lite's type ("quantitative", "nominal", "ordinal")."""
    return {"field": name, "type": kind, **options}


def _layer(values: list[dict[str, Any]], mark: dict[str, Any], **encoding: Any) -> Spec:
    return {"data": {"values": values}, "mark": mark, "encoding": encoding}


def _tip(name: str, kind: str, title: str | None = None, fmt: str | None = None) -> dict[str, Any]:
    tip = _field(name, kind)
    if title:
        tip["title"] = title
    if fmt:
        tip["format"] = fmt
    return tip


def _box_stats(values: np.ndarray) -> dict[str, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": q1, "median": median, "q3": q3, "low": inside.min(), "high": inside.max()}


def score_distribution_chart(
    ctx: Any, threshold: float | None, groups: Sequence[str] | None = None, *, height: int = 380
) -> Spec:
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
    x_axis = {"title": [title, f"{beyond} lie further right"] if beyond else title, "titlePadding": 8}
    x_scale = {"domain": domain, "nice": False, "zero": False}

    def x(name: str) -> dict[str, Any]:
        return _field(name, "quantitative", scale=x_scale, axis=x_axis)

    y = _field("group", "nominal", sort=labels, title=None, axis={"labelLimit": 260, "labelFontSize": 12})
    colour = _field("group", "nominal", scale={"domain": labels, "range": label_colours}, legend=None)
    box_data = _records(boxes)
    whisker = _layer(box_data, {"type": "rule", "strokeWidth": 1.5, "clip": True},
                     x=x("low"), x2={"field": "high"}, y=y, color=colour)  # fmt: skip
    box = _layer(
        box_data, {"type": "bar", "size": 24, "opacity": 0.18, "stroke": "black", "strokeWidth": 0.5, "clip": True},
        x=x("q1"), x2={"field": "q3"}, y=y, color=colour,
        tooltip=[_tip("group", "nominal"), _tip("median", "quantitative", fmt=".4g"),
                 _tip("q1", "quantitative", fmt=".4g"), _tip("q3", "quantitative", fmt=".4g")],
    )  # fmt: skip
    median = _layer(box_data, {"type": "tick", "size": 24, "thickness": 2, "clip": True},
                    x=x("median"), y=y, color=colour)  # fmt: skip
    dots = _layer(
        _records(points), {"type": "point", "filled": True, "size": 36, "opacity": 0.8, "clip": True},
        x=x("score"), y=y, color=colour,
        yOffset=_field("jitter", "quantitative", scale={"domain": [-0.5, 0.5]}),
        shape=_field("synthetic", "nominal", scale={"domain": [False, True], "range": ["circle", "diamond"]},
                     legend=None),
        tooltip=[_tip("name", "nominal", title="image"), _tip("group", "nominal"),
                 _tip("score", "quantitative", fmt=".4g")],
    )  # fmt: skip
    return {
        "layer": [*_threshold_layers(threshold, domain, x), whisker, box, median, dots],
        "height": max(height, 60 + ROW_PX * len(labels)) - 70,
        "width": "container",
        "title": {"text": "Anomaly scores by group", "fontSize": 14, "anchor": "start", "offset": 22},
    }


def _threshold_layers(threshold: float | None, domain: list[float], x) -> list[Spec]:
    if threshold is None:
        return []
    t = float(min(max(threshold, domain[0]), domain[1]))
    data = [{"t": t, "right": domain[1], "text": f"threshold {threshold:.4g} → flagged"}]
    shade = _layer(data, {"type": "rect", "opacity": 0.06, "color": FLAGGED_FILL}, x=x("t"), x2={"field": "right"})
    line = _layer(data, {"type": "rule", "strokeDash": [6, 4], "strokeWidth": 2, "color": THRESHOLD_COLOR}, x=x("t"))
    left_half = t < (domain[0] + domain[1]) / 2  # the label on the side with room for it
    label = _layer(  # above the plot area, where it covers no point
        data, {"type": "text", "align": "left" if left_half else "right", "dx": 5 if left_half else -5,
               "baseline": "bottom", "y": -4, "fontSize": 12},
        x=x("t"), text=_field("text", "nominal"),
    )  # fmt: skip
    return [shade, line, label]


def _records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-ready rows (numpy numbers as Python floats and bools)."""
    out = []
    for row in rows:
        out.append({k: (float(v) if isinstance(v, (np.floating, float)) else bool(v) if isinstance(v, np.bool_) else v)
                    for k, v in row.items()})  # fmt: skip
    return out


def roc_chart(curve: Any, point: Any, label: str = "", *, height: int = 340) -> Spec:
    """ROC curve (false-alarm rate vs recall) with the current operating point marked."""
    keep = _thin(curve.false_alarm_rate.size)
    area = auc(curve.false_alarm_rate, curve.recall)
    marked = None
    if point is not None and point.false_alarm_rate is not None and point.recall is not None:
        marked = (point.false_alarm_rate, point.recall)
    return _curve_chart(curve.false_alarm_rate[keep], curve.recall[keep], [0, 1], [0, 1], marked,
                        f"ROC · AUROC {area:.3f}", label, ("false-alarm rate", "false alarms"),
                        ("recall (defects caught)", "recall"), height)  # fmt: skip


def pr_chart(curve: Any, point: Any, label: str = "", *, height: int = 340) -> Spec:
    """Precision-recall curve with the current operating point marked, and the no-skill level."""
    keep = _thin(curve.recall.size)
    prevalence = float(curve.precision[0]) if curve.precision.size else 0.0  # at the lowest threshold
    marked = None
    if point is not None and point.precision is not None and point.recall is not None:
        marked = (point.recall, point.precision)
    return _curve_chart(curve.recall[keep], curve.precision[keep], [0, 1], [prevalence, prevalence], marked,
                        "Precision vs recall", label, ("recall (defects caught)", "recall"),
                        ("precision (flags: defects)", "precision"), height)  # fmt: skip


def _points(xs: Sequence[float], ys: Sequence[float]) -> list[dict[str, float]]:
    return [{"x": float(a), "y": float(b)} for a, b in zip(xs, ys)]


def _curve_chart(xs: np.ndarray, ys: np.ndarray, chance_x: list[float], chance_y: list[float], marked: tuple | None,
                 title: str, label: str, x: tuple[str, str], y: tuple[str, str], height: int) -> Spec:  # fmt: skip
    scale = {"domain": [-0.02, 1.02], "nice": False}
    x_enc = _field("x", "quantitative", scale=scale, axis={"title": x[0], "format": ".0%", "titlePadding": 8})
    y_enc = _field("y", "quantitative", scale=scale, axis={"title": y[0], "format": ".0%", "titlePadding": 8})
    tooltip = [_tip("x", "quantitative", title=x[1], fmt=".1%"), _tip("y", "quantitative", title=y[1], fmt=".1%")]
    layers = [
        _layer(_points(chance_x, chance_y), {"type": "line", "color": "#bbbbbb", "strokeDash": [2, 3]}, x=x_enc, y=y_enc),
        _layer(_points(xs, ys), {"type": "line", "strokeWidth": 2, "color": CURVE_COLOR}, x=x_enc, y=y_enc,
               tooltip=tooltip),
    ]  # fmt: skip
    if marked is not None:
        layers.append(_layer(_points([marked[0]], [marked[1]]),
                             {"type": "point", "filled": True, "size": 160, "color": POINT_COLOR, "stroke": "white",
                              "strokeWidth": 2, "opacity": 1}, x=x_enc, y=y_enc, tooltip=tooltip))  # fmt: skip
    return {
        "layer": layers,
        "height": height - 70,
        "width": "container",
        "title": {"text": f"{title} · {label}" if label else title, "fontSize": 13, "anchor": "start", "limit": 0},
    }


def score_history_chart(history: dict[str, np.ndarray], *, height: int = 360) -> Spec:
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
    x = _field("epoch", "ordinal", title="epoch", axis={"labelAngle": 0, "titlePadding": 8})
    offset = _field("group", "nominal", sort=labels)
    colour = _field("group", "nominal", sort=labels, scale={"domain": labels, "range": [colours[g] for g in groups]},
                    legend={"orient": "bottom", "title": None, "labelLimit": 0})  # fmt: skip
    y_axis = {"title": "anomaly score", "titlePadding": 8}

    def y(name: str) -> dict[str, Any]:
        return _field(name, "quantitative", axis=y_axis, scale={"zero": False})

    data = _records(boxes)
    return {
        "data": {"values": data},
        "layer": [
            {"mark": {"type": "rule"}, "encoding": {"x": x, "xOffset": offset, "y": y("low"), "y2": {"field": "high"},
                                                    "color": colour}},
            {"mark": {"type": "bar", "opacity": 0.35, "stroke": "black", "strokeWidth": 0.5},
             "encoding": {"x": x, "xOffset": offset, "y": y("q1"), "y2": {"field": "q3"}, "color": colour,
                          "tooltip": [_tip("epoch", "ordinal"), _tip("group", "nominal"),
                                      _tip("median", "quantitative", fmt=".4g")]}},
            {"mark": {"type": "tick", "thickness": 2, "color": "black"},
             "encoding": {"x": x, "xOffset": offset, "y": y("median")}},
        ],  # fmt: skip
        "height": height,
        "width": "container",  # the page titles it
    }
