"""The threshold view-model of the Scores page: a run's scores grouped once (``score_context``), then
for any threshold the counts, estimates, figures and gallery rows (``threshold_view``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from adcore.projection import group_order, map_groups
from adcore.threshold import (
    FIT_SOURCE,
    HOLDOUT_SOURCE,
    ScoreTable,
    defect_recall,
    false_alarm_estimate,
    is_anomalous,
    run_tables,
    synthetic_recall,
)
from adcore.viz import charts
from adcore.viz.figures import group_kind, group_label, pr_figure, roc_figure, score_distribution_figure
from adcore.viz.run_images import row_name


FLAGGED = "flagged"


@dataclass
class ScoreContext:
    """What the Scores page needs of one run's scores that does not change with the threshold:
    built once per run (and scorer), then every slider move is cheap (``threshold_view``)."""

    run: Any  # adcore.runs.Run (results are read, never changed)
    scores: np.ndarray  # (N,) every row of run.results, higher = more anomalous
    groups: np.ndarray  # (N,) legend group per row
    order: list[str]  # legend order of the groups present
    names: list[str]  # (N,) row names for hover texts and captions
    rows: dict[str, np.ndarray]  # group -> its rows
    reference_rows: np.ndarray  # the normal rows a false-alarm target is set from
    reference_source: str  # which normal images those are, in words (adcore.threshold)
    normal_rows: np.ndarray  # normal rows not trained on: where false alarms are counted
    real_defect_rows: np.ndarray
    synthetic_rows: np.ndarray
    real: Any  # ScoreTable of test normals vs real test defects, or None
    synthetic: Any  # ScoreTable of hold-out normals vs synthetic defects, or None
    reference_warning: str = ""

    @property
    def has_real_defects(self) -> bool:
        return self.real is not None

    @property
    def evaluation(self) -> tuple[Any, str]:
        """The labelled table the ROC/PR curves and the confusion matrix use, and its description."""
        if self.real is not None:
            return self.real, "test normals vs real defects"
        return self.synthetic, "hold-out normals vs synthetic defects (not real)"


def score_context(run: Any, scores: np.ndarray | None = None) -> ScoreContext:
    """Group a run's scores (``scores`` replaces the stored ones, e.g. from an embedding scorer)."""
    tables = run_tables(run, scores)
    groups = map_groups(run)
    order = group_order(groups)
    rows = {g: np.flatnonzero(groups == g) for g in order}
    warning = ""
    if tables.holdout_normal.size:
        reference, source = tables.holdout_normal, HOLDOUT_SOURCE
    else:
        reference, source = tables.fit_normal, FIT_SOURCE
        warning = (
            "No normal images were held out from training, so thresholds are judged on training images "
            "the model has seen: expect more false alarms than stated. Retrain with a hold-out fraction."
        )
    defects = np.concatenate([np.zeros(0, np.intp), *tables.test_defects.values()])
    synthetic = np.concatenate([np.zeros(0, np.intp), *tables.synthetic.values()])
    synthetic_table = None
    if tables.holdout_normal.size and synthetic.size:
        both = np.concatenate([tables.holdout_normal, synthetic])
        synthetic_table = ScoreTable(tables.scores[both], np.arange(both.size) >= tables.holdout_normal.size)
    real = tables.test_table()
    for table in (real, synthetic_table):
        if table is not None:  # computed here, once, rather than on the first slider move
            table.roc, table.pr
    results = run.results
    return ScoreContext(
        run=run,
        scores=tables.scores,
        groups=groups,
        order=order,
        names=[row_name(results, i) for i in range(tables.scores.size)],
        rows=rows,
        reference_rows=reference,
        reference_source=source,
        normal_rows=np.sort(np.concatenate([tables.holdout_normal, tables.test_normal])),
        real_defect_rows=np.sort(defects),
        synthetic_rows=np.sort(synthetic),
        real=real,
        synthetic=synthetic_table,
        reference_warning=warning,
    )


@dataclass(frozen=True)
class SliderRange:
    low: float
    high: float
    step: float
    format: str  # printf format for st.slider

    def clip(self, value: float) -> float:
        return float(min(self.high, max(self.low, value)))


def threshold_slider_range(scores: np.ndarray, steps: int = 1000) -> SliderRange:
    """A slider range a little wider than ``scores`` with a round step of about span/``steps``."""
    low, high = float(np.min(scores)), float(np.max(scores))
    span = high - low if high > low else max(abs(high), 1.0)
    step = 10.0 ** math.floor(math.log10(span / steps))
    decimals = max(0, -math.floor(math.log10(step)))
    pad = max(span * 0.02, step)
    low = math.floor((low - pad) / step) * step
    high = math.ceil((high + pad) / step) * step
    return SliderRange(round(low, decimals), round(high, decimals), step, f"%.{decimals}f")


@dataclass
class ThresholdView:
    """Everything the Scores page shows for one threshold."""

    threshold: float
    point: Any  # OperatingPoint on ``evaluation_label``'s images, or None
    evaluation_label: str
    estimate: Any  # FalseAlarmEstimate on the reference normals
    recalls: list[Any]  # RecallEstimate per real defect class, then per synthetic kind
    group_rows: list[dict[str, Any]]
    distribution: Any  # a plotly figure, or a Vega-Lite chart (``vega=True``)
    roc: Any | None
    pr: Any | None
    gallery: dict[str, tuple[np.ndarray, int]]  # title -> (rows shown, how many in all)


def threshold_view(
    ctx: ScoreContext,
    threshold: float,
    *,
    chosen_from_reference: bool = False,
    show_train: bool = False,
    curves: bool = True,
    vega: bool = False,
    gallery_size: int = 8,
    height: int = 380,
) -> ThresholdView:
    """Metrics, figures and gallery rows at ``threshold`` (flagged: score >= threshold); ``curves``:
    build the ROC and precision-recall figures (where there is something to draw them on); ``vega``:
    as Vega-Lite charts (``adcore.viz.charts``, the pages) rather than plotly figures (the report)."""
    t = float(threshold)
    table, label = ctx.evaluation
    point = table.at(t) if table is not None else None
    estimate = false_alarm_estimate(
        ctx.scores[ctx.reference_rows], t, chosen_from_these=chosen_from_reference, source=ctx.reference_source
    )
    recalls = [*defect_recall(ctx.run, t, ctx.scores).values(), *synthetic_recall(ctx.run, t, ctx.scores).values()]
    shown = [g for g in ctx.order if show_train or g != "train normal"]
    return ThresholdView(
        threshold=t,
        point=point,
        evaluation_label=label,
        estimate=estimate,
        recalls=recalls,
        group_rows=group_rate_rows(ctx, t, shown),
        distribution=(charts.score_distribution_chart if vega else score_distribution_figure)(
            ctx, t, shown, height=height
        ),
        roc=None if table is None or not curves else (charts.roc_chart if vega else roc_figure)(table.roc, point, label),
        pr=None if table is None or not curves else (charts.pr_chart if vega else pr_figure)(table.pr, point, label),
        gallery=gallery_rows(ctx, t, gallery_size),
    )


def group_rate_rows(ctx: ScoreContext, threshold: float, groups: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group: its images, how many the threshold flags, and what flagging means there."""
    out = []
    for group in groups:
        values = ctx.scores[ctx.rows[group]]
        flagged = int(np.count_nonzero(is_anomalous(values, threshold)))
        kind = group_kind(group)
        meaning = {
            "normal": "false alarms" if group != "train normal" else "flagged (seen in training)",
            "defect": "caught",
            "synthetic": "caught (synthetic, not real)",
        }[kind]
        out.append(
            {
                "group": group_label(group),
                "images": int(values.size),
                FLAGGED: flagged,
                "share flagged": flagged / values.size if values.size else None,
                "flagged means": meaning,
            }
        )
    return out


def confusion_table(point: Any) -> "pd.DataFrame":
    """A 2x2 confusion matrix: rows what an image is, columns what the threshold says."""
    import pandas as pd

    return pd.DataFrame(
        {"flagged": [point.tp, point.fp], "passed": [point.fn, point.tn]},
        index=pd.Index(["defect", "normal"], name="actually"),
    )


FALSE_ALARMS_TITLE = "False alarms among hold-out and test normals"


def gallery_rows(ctx: ScoreContext, threshold: float, k: int = 8) -> dict[str, tuple[np.ndarray, int]]:
    """Rows worth looking at: nearest the threshold, false alarms (highest first) and misses
    (lowest first, on real defects, else on synthetic ones); each with how many there are in all."""
    scores = ctx.scores
    candidates = np.concatenate([ctx.normal_rows, ctx.real_defect_rows, ctx.synthetic_rows])
    nearest = candidates[np.argsort(np.abs(scores[candidates] - threshold), kind="stable")[:k]]
    nearest = nearest[np.argsort(scores[nearest], kind="stable")]
    alarms = ctx.normal_rows[is_anomalous(scores[ctx.normal_rows], threshold)]
    alarms = alarms[np.argsort(-scores[alarms], kind="stable")]
    defects = ctx.real_defect_rows if ctx.real_defect_rows.size else ctx.synthetic_rows
    misses = defects[~is_anomalous(scores[defects], threshold)]
    misses = misses[np.argsort(scores[misses], kind="stable")]
    miss_title = "Missed defects" if ctx.real_defect_rows.size else "Missed synthetic defects (not real)"
    # Each title says what it counts: false alarms here are among every normal not trained on (the
    # hold-out ones too), where the False alarms metric counts the test normals alone.
    return {
        "Nearest the threshold": (nearest, int(nearest.size)),
        FALSE_ALARMS_TITLE: (alarms[:k], int(alarms.size)),
        miss_title: (misses[:k], int(misses.size)),
    }
