"""Plotly figures of training and scores: loss curve, score distributions by group, ROC and PR
curves, score history, the embedding map; and the colours and symbols of the legend groups."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from sklearn.metrics import auc



# --- training progress ------------------------------------------------------------------------


def loss_curve_figure(
    losses: Sequence[tuple[int, float]], total_steps: int | None = None, *, height: int = 260
) -> go.Figure:
    """Line plot of ``(step, loss)`` pairs; the x axis spans the whole training when ``total_steps``
    is known, so the curve grows from left to right. A log y axis once the loss spans 20x or more."""
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=values,
            mode="lines+markers" if len(losses) < 30 else "lines",
            line={"width": 2},
            hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>",
        )
    )
    positive = [v for v in values if v > 0]
    log_y = len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 20
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": "Training loss", "font": {"size": 14}},
        xaxis_title="step",
        yaxis_title="loss",
        yaxis_type="log" if log_y else "linear",
        showlegend=False,
    )
    if total_steps:
        fig.update_xaxes(range=[0, total_steps])
    return fig


# --- scores and the threshold -----------------------------------------------------------------
# Groups are the legend groups of adcore.projection.map_groups: "train normal", "hold-out normal",
# "test normal", each real defect class, and "synthetic cutpaste" / "synthetic scar".

NORMAL_COLORS = {"train normal": "#aab2bd", "hold-out normal": "#2f6fb0", "test normal": "#4fb0c6"}


DEFECT_COLORS = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#a50f15", "#f4a259", "#6b3e26")


SYNTHETIC_COLORS = ("#7b4fbf", "#1b9e77", "#e7298a")  # purple, green, magenta: told apart at a glance


SYNTHETIC_SYMBOLS = ("diamond", "triangle-up", "star")


SCORE_COLORSCALE = "YlOrRd"  # pale yellow (low) to dark red (high): the lowest scores look like the least


THRESHOLD_COLOR = "#222222"


MAX_BOX_POINTS = 400  # a group with more images shows its box and outliers, not every point


MAX_CURVE_POINTS = 400  # ROC / PR curves sent to the browser are thinned to this many points


def group_kind(group: str) -> str:
    """"normal", "synthetic" or "defect" for a legend group name."""
    if group in NORMAL_COLORS:
        return "normal"
    return "synthetic" if group.startswith("synthetic ") else "defect"


def group_colors(order: Sequence[str]) -> dict[str, str]:
    """A colour per group: blues and greys for normals, reds and oranges for defects, purples for synthetic."""
    colours, defects, synthetic = {}, 0, 0
    for group in order:
        kind = group_kind(group)
        if kind == "normal":
            colours[group] = NORMAL_COLORS[group]
        elif kind == "synthetic":
            colours[group] = SYNTHETIC_COLORS[synthetic % len(SYNTHETIC_COLORS)]
            synthetic += 1
        else:
            colours[group] = DEFECT_COLORS[defects % len(DEFECT_COLORS)]
            defects += 1
    return colours


def group_symbols(order: Sequence[str], three: bool = False) -> dict[str, str]:
    """A marker symbol per group: circles for normals, crosses for defects, and a different shape
    for each synthetic kind (they also differ in colour, see ``group_colors``)."""
    symbols, synthetic = {}, 0
    for group in order:
        kind = group_kind(group)
        if kind == "synthetic":
            symbols[group] = "diamond" if three else SYNTHETIC_SYMBOLS[synthetic % len(SYNTHETIC_SYMBOLS)]
            synthetic += 1
        else:
            symbols[group] = "circle" if kind == "normal" else ("cross" if three else "x")
    return symbols


def group_label(group: str, n: int | None = None) -> str:
    """How a group is named in legends: synthetic groups always say that they are not real."""
    text = f"{group} (not real)" if group_kind(group) == "synthetic" else group
    return text if n is None else f"{text} · {n}"


def _hex_rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def score_distribution_figure(
    ctx: Any, threshold: float | None, groups: Sequence[str] | None = None, *, height: int = 380
) -> go.Figure:
    """Scores of each group as a box with its images as points, one row per group, and the
    threshold as a dashed line over a shaded "flagged" side. ``ctx`` is a ``score_view.ScoreContext``
    (not imported here: the view-model builds its figures with this module, not the other way)."""
    groups = list(ctx.order if groups is None else groups)
    colours = group_colors(ctx.order)
    fig = go.Figure()
    rng = np.random.default_rng(0)
    for group in groups:
        rows = ctx.rows[group]
        if rows.size > 5 * MAX_BOX_POINTS:  # the browser gets a fair sample, not 100,000 numbers
            rows = np.sort(rng.choice(rows, 5 * MAX_BOX_POINTS, replace=False))
        few = ctx.rows[group].size <= MAX_BOX_POINTS
        colour = colours[group]
        fig.add_trace(
            go.Box(
                x=ctx.scores[rows],
                name=group_label(group, int(ctx.rows[group].size)),
                orientation="h",
                boxpoints="all" if few else "outliers",
                jitter=0.6,
                pointpos=0,
                marker={"color": colour, "size": 6, "opacity": 0.8,
                        "symbol": "diamond" if group_kind(group) == "synthetic" else "circle"},
                line={"color": colour, "width": 1.5},
                fillcolor=_hex_rgba(colour, 0.12),
                text=[ctx.names[i] for i in rows] if few else None,
                hoveron="points" if few else "boxes",
                hovertemplate="%{text}<br>score %{x:.4g}<extra></extra>" if few else None,
                showlegend=False,
            )
        )
    fig.update_layout(
        height=max(height, 60 + 46 * len(groups)),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": "Anomaly scores by group", "font": {"size": 14}},
        xaxis={"title": {"text": "anomaly score (higher = more anomalous)", "standoff": 8}},
        yaxis={"autorange": "reversed"},
    )
    _room_for_labels(fig)
    low, high, beyond = _score_axis(ctx, groups, threshold)
    pad = 0.04 * (high - low) or 1.0
    fig.update_xaxes(range=[low - pad, high + pad])
    if beyond:  # said under the axis, where it covers no point
        fig.update_xaxes(title_text=f"anomaly score (higher = more anomalous)<br><sup>{beyond} lie further right</sup>")
    if threshold is not None:
        _add_threshold(fig, threshold, low - pad, high + pad)
    return fig


def _score_axis(ctx: Any, groups: Sequence[str], threshold: float | None) -> tuple[float, float, str]:
    """(low, high, note): the score range to show. Synthetic CutPaste patches can score far above
    everything real; they must not squeeze the real groups into a corner, so the axis stops half
    its width beyond the real scores and the note says what lies further right."""
    values = [ctx.scores[ctx.rows[g]] for g in groups if ctx.rows[g].size]
    real = [v for g, v in zip(groups, values) if group_kind(g) != "synthetic"]
    every = np.concatenate(values) if values else ctx.scores
    core = np.concatenate(real) if real else every
    extra = [] if threshold is None else [threshold]
    low, high = float(min([every.min(), *extra])), float(max([every.max(), *extra]))
    core_high = float(max([core.max(), *extra]))
    limit = core_high + 0.5 * (core_high - low)
    if high <= limit or not real:
        return low, high, ""
    outside = int(np.count_nonzero(every > limit))
    return low, limit, f"{outside} synthetic score(s) up to {high:.3g}"


def _add_threshold(fig: go.Figure, threshold: float, left: float, right: float) -> None:
    # Vertically in paper coordinates, so the line spans every row whatever the y axis does.
    fig.add_shape(
        type="rect", xref="x", yref="paper", x0=threshold, x1=right, y0=0, y1=1,
        fillcolor="rgba(214,39,40,0.06)", line={"width": 0}, layer="below",
    )  # fmt: skip
    fig.add_shape(
        type="line", xref="x", yref="paper", x0=threshold, x1=threshold, y0=0, y1=1,
        line={"color": THRESHOLD_COLOR, "width": 2, "dash": "dash"},
    )  # fmt: skip
    fig.add_annotation(
        x=threshold, y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
        # Written on the side of the line with room for it, so it is not cut off at the edge.
        text=f"threshold {threshold:.4g} → flagged", xanchor="left" if threshold < (left + right) / 2 else "right",
        font={"size": 12},
    )  # fmt: skip


def _thin(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` of n curve points, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def roc_figure(curve: Any, point: Any, label: str = "", *, height: int = 340) -> go.Figure:
    """ROC curve (false-alarm rate vs recall) with the current operating point marked."""
    keep = _thin(curve.false_alarm_rate.size)
    area = auc(curve.false_alarm_rate, curve.recall)
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbbbbb", "dash": "dot"}, hoverinfo="skip"),
            go.Scatter(
                x=curve.false_alarm_rate[keep], y=curve.recall[keep], mode="lines",
                line={"width": 2, "color": "#2f6fb0"},
                hovertemplate="false alarms %{x:.1%}<br>recall %{y:.1%}<extra></extra>",
            ),
        ]
    )  # fmt: skip
    if point is not None and point.false_alarm_rate is not None and point.recall is not None:
        _mark(fig, point.false_alarm_rate, point.recall)
    _curve_layout(fig, f"ROC · AUROC {area:.3f}", label, "false-alarm rate", "recall (defects caught)", height)
    return fig


def pr_figure(curve: Any, point: Any, label: str = "", *, height: int = 340) -> go.Figure:
    """Precision-recall curve with the current operating point marked, and the no-skill level."""
    keep = _thin(curve.recall.size)
    prevalence = float(curve.precision[0]) if curve.precision.size else 0.0  # at the lowest threshold
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1], y=[prevalence] * 2, mode="lines", line={"color": "#bbbbbb", "dash": "dot"},
                       hoverinfo="skip"),
            go.Scatter(
                x=curve.recall[keep], y=curve.precision[keep], mode="lines", line={"width": 2, "color": "#2f6fb0"},
                hovertemplate="recall %{x:.1%}<br>precision %{y:.1%}<extra></extra>",
            ),
        ]
    )  # fmt: skip
    if point is not None and point.precision is not None and point.recall is not None:
        _mark(fig, point.recall, point.precision)
    y_title = "precision (flags that are defects)"
    _curve_layout(fig, "Precision vs recall", label, "recall (defects caught)", y_title, height)
    return fig


def _mark(fig: go.Figure, x: float, y: float) -> None:
    fig.add_trace(
        go.Scatter(
            x=[x], y=[y], mode="markers",
            marker={"size": 13, "color": "#d62728", "line": {"width": 2, "color": "white"}},
            hovertemplate="this threshold<br>%{x:.1%}, %{y:.1%}<extra></extra>",
        )
    )  # fmt: skip


def _curve_layout(fig: go.Figure, title: str, label: str, x: str, y: str, height: int) -> None:
    subtitle = f"<br><sup>{label}</sup>" if label else ""
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 56, "b": 10},
        title={"text": title + subtitle, "font": {"size": 14}},
        xaxis={"title": {"text": x, "standoff": 8}, "range": [-0.02, 1.02], "tickformat": ".0%"},
        yaxis={"title": {"text": y, "standoff": 8}, "range": [-0.02, 1.02], "tickformat": ".0%"},
        showlegend=False,
    )
    _room_for_labels(fig)


def _room_for_labels(fig: go.Figure) -> None:
    """Let the margins grow to fit tick labels and axis titles. Streamlit's theme does this on the
    pages; a figure drawn anywhere else (the HTML report) would otherwise clip its labels to the
    last few characters ("48" of "train normal · 48", "%" of "100%")."""
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)


def score_history_figure(history: dict[str, np.ndarray], *, height: int = 320) -> go.Figure:
    """Score distributions per training epoch (``adcore.projection.score_history``), a box per group."""
    groups = list(dict.fromkeys(history["group"].tolist()))
    colours = group_colors(groups)
    fig = go.Figure()
    for group in groups:
        pick = history["group"] == group
        fig.add_trace(
            go.Box(
                x=history["epoch"][pick], y=history["score"][pick], name=group_label(group),
                marker={"color": colours[group]}, boxpoints=False,
            )
        )  # fmt: skip
    fig.update_layout(
        height=height,
        boxmode="group",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": "Scores during training", "font": {"size": 14}},
        xaxis={"title": {"text": "epoch", "standoff": 8}},
        yaxis={"title": {"text": "anomaly score", "standoff": 8}},
        legend={"orientation": "h", "y": -0.25},
    )
    _room_for_labels(fig)
    return fig


# --- embedding maps ---------------------------------------------------------------------------


def embedding_figure(
    coords: np.ndarray,
    groups: np.ndarray,
    order: Sequence[str],
    scores: np.ndarray,
    names: Sequence[str],
    *,
    color_by: str = "group",
    height: int = 600,
) -> go.Figure:
    """A 2-D or 3-D scatter of map ``coords`` (N, 2|3), one legend entry per group, or coloured by
    score. Every point carries ``customdata = [row, score]`` so a selection maps back to rows."""
    dims = coords.shape[1]
    three = dims == 3
    trace = go.Scatter3d if three else (go.Scattergl if len(coords) > 5000 else go.Scatter)
    colours = group_colors(order)
    symbols = group_symbols(order, three)
    hover = "<b>%{text}</b><br>%{meta}<br>score %{customdata[1]:.4g}<extra></extra>"
    # The colour range leaves out the extreme 1 % at either end, so one outlier cannot squeeze every
    # other image into the middle of the scale.
    low, high = (float(v) for v in np.percentile(scores, [1, 99])) if len(scores) else (0.0, 1.0)
    fig = go.Figure()
    for group in order:
        rows = np.flatnonzero(groups == group)
        xyz = {"x": coords[rows, 0], "y": coords[rows, 1]}
        if three:
            xyz["z"] = coords[rows, 2]
        marker: dict[str, Any] = {"size": 4 if three else 8, "symbol": symbols[group], "opacity": 0.85}
        if color_by == "score":
            marker.update(color=scores[rows], colorscale=SCORE_COLORSCALE, cmin=low, cmax=max(high, low + 1e-12),
                          line={"width": 0.5, "color": "#777777"}, showscale=group == order[0],
                          colorbar={"title": {"text": "score"}})  # fmt: skip
        else:
            marker["color"] = colours[group]
        fig.add_trace(
            trace(
                **xyz,
                mode="markers",
                name=group_label(group, int(rows.size)),
                marker=marker,
                text=[names[i] for i in rows],
                meta=group_label(group),
                customdata=np.column_stack([rows, scores[rows]]),
                hovertemplate=hover,
            )
        )
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"title": {"text": "click to hide:"}, "itemsizing": "constant", "orientation": "h", "y": -0.02,
                "yanchor": "top"},
    )
    # 2-D: no drag mode of our own, so Streamlit's default (pan) applies, in which a click selects
    # the point under it; in a box or lasso mode (chosen from the tool bar) clicks select nothing.
    if three:
        fig.update_layout(dragmode="orbit")
    if not three:  # a map's axes mean nothing: no numbers, and no zero lines across it
        fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
        fig.update_yaxes(showticklabels=False, title=None, zeroline=False)
    return fig


def selected_rows(selection: Any) -> list[int]:
    """Result rows of the points in a Streamlit plotly selection (``customdata[0]`` of each point)."""
    rows = []
    for point in (selection or {}).get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, dict):  # the browser may send an array as {"0": row, "1": score}
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        if isinstance(data, (list, tuple)) and data:
            rows.append(int(data[0]))
        elif isinstance(data, (int, float)):
            rows.append(int(data))
    return list(dict.fromkeys(rows))


def roc_overlay_figure(
    curves: dict[str, tuple[Any, Any]], *, height: int = 420, title: str = "ROC curves"
) -> go.Figure:
    """Several runs' ROC curves in one figure: ``{label: (RocCurve, OperatingPoint or None)}``."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "#bbbbbb", "dash": "dot"},
                               hoverinfo="skip", showlegend=False))  # fmt: skip
    palette = ("#2f6fb0", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2")
    for i, (label, (curve, point)) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        keep = _thin(curve.false_alarm_rate.size)
        area = auc(curve.false_alarm_rate, curve.recall)
        fig.add_trace(go.Scatter(
            x=curve.false_alarm_rate[keep], y=curve.recall[keep], mode="lines", name=f"{label} · AUROC {area:.3f}",
            line={"width": 2.5, "color": colour}, legendgroup=label,
            hovertemplate=f"{label}<br>false alarms %{{x:.1%}}<br>recall %{{y:.1%}}<extra></extra>",
        ))  # fmt: skip
        if point is not None and point.false_alarm_rate is not None:
            fig.add_trace(go.Scatter(
                x=[point.false_alarm_rate], y=[point.recall], mode="markers", legendgroup=label, showlegend=False,
                marker={"size": 12, "color": colour, "line": {"width": 2, "color": "white"}},
                hovertemplate=f"{label} at its threshold<br>%{{x:.1%}}, %{{y:.1%}}<extra></extra>",
            ))  # fmt: skip
    note = "dots: each run's chosen threshold"
    _curve_layout(fig, title, note, "false-alarm rate", "recall (defects caught)", height)
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.2})
    return fig
