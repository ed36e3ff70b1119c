"""A self-contained HTML report of one run, for handing to someone who will not open the dashboard.

Everything is inside the one file: plotly's JavaScript once, figures as JSON, pictures as PNG data
URIs. It opens offline in any browser. It shows the set-up, the metrics, the threshold and how
reliable it is, the score distributions with the threshold, the confusion matrix, the embedding map
and the most anomalous images with their heat maps.

    >>> from adcore.report import write_report
    >>> write_report("runs/autoencoder-...", "report.html")
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

import adcore
from adcore import viz
from adcore.data import ImageError, load_mask, open_image_set
from adcore.export import ScorerSpec, fit_run_scorer, map_display_range
from adcore.files import write_atomic
from adcore.projection import map_groups, group_order, project_run, score_history
from adcore.runs import Run, load_run
from adcore.scoring import image_metrics
from adcore.threshold import Threshold, format_percent, is_anomalous, synthetic_caveat, threshold_for

TOP_ANOMALIES = 8
PICTURE_SIDE = 240
MAX_MAP_POINTS = 5000  # the embedding map needs a t-SNE; beyond this many images it is left out


def write_report(run: Run | Path | str, out: Path | str, **options: Any) -> Path:
    """Write ``build_report(run, **options)`` to ``out`` and return its path: atomically, so a failure
    (while building, or a full disk while writing) leaves no half-written file and an older ``out``
    as it was."""
    text = build_report(run if isinstance(run, Run) else load_run(run), **options)
    return write_atomic(out, text.encode("utf-8"))


def build_report(
    run: Run,
    *,
    scores: np.ndarray | None = None,
    threshold: Threshold | None = None,
    scored_by: str | None = None,
    top_k: int = TOP_ANOMALIES,
    embedding_map: bool = True,
) -> str:
    """The report as one HTML string.

    By default the run is scored as saved: with the embedding scorer saved with it (if any) and
    ``adcore.threshold.threshold_for`` those scores (its saved threshold, or the default rule).
    ``scores`` with their ``threshold``, and ``scored_by`` (words, e.g. "the knn scorer on its
    embeddings") override that, as the Compare page does with the choice made on the Scores page.
    """
    if scores is None:
        scores, scored_by, choice = _saved_scores(run)
        threshold = threshold or threshold_for(run, choice, scores)
    elif threshold is None:
        raise ValueError("build_report: pass the threshold chosen for the scores given")
    scored_by = scored_by or "the method's own score"
    ctx = viz.score_context(run, scores)
    view = viz.threshold_view(ctx, threshold.value)
    figures = _Figures()
    parts = [
        _header(run, scored_by),
        _setup(run),
        _results(run, ctx, view, threshold, scored_by),
        _section("Score distributions", figures.add(view.distribution), _caption(
            "Each dot is an image; the dashed line is the threshold, images to its right are flagged. "
            "Synthetic defects are CutPaste patches pasted onto hold-out normal images by the training run, "
            "not real defects."
        )),  # fmt: skip
    ]
    if run.config.get("selection"):
        parts.append(_selection_section(run.config["selection"]))
    if view.roc is not None:
        parts.append(
            _section(
                f"ROC and precision–recall ({html.escape(view.evaluation_label)})",
                f'<div class="row">{figures.add(view.roc)}{figures.add(view.pr)}</div>',
                _caption("The dot marks the chosen threshold."),
            )
        )
    if embedding_map:
        parts.append(_embedding_section(run, ctx, figures))
    history = score_history(run)
    if history is not None:
        parts.append(_section("Scores during training", figures.add(viz.score_history_figure(history))))
    parts.append(_top_anomalies(run, ctx, threshold, top_k))
    parts.append(_footer())
    return _page(viz.run_title(run.config, run.run_id), "\n".join(parts))


# --- what is shown --------------------------------------------------------------------------------


def _selection_section(selection: dict[str, Any]) -> str:
    from adcore.methods.auto import describe_selection

    rows, sentence = describe_selection(selection)
    header = list(rows[0]) if rows else []
    return _section("How the method configured itself", _caption(sentence),
                    _table(header, [["" if v is None else v for v in r.values()] for r in rows]) if rows else "")


def _saved_scores(run: Run) -> tuple[np.ndarray, str | None, dict[str, Any] | None]:
    """(scores of every row, who gave them in words, the scorer choice) as the run was saved."""
    spec = ScorerSpec.saved_with(run)
    if spec is not None and "embedding" in run.results:
        return fit_run_scorer(run, spec)[2], f"the {spec.name} scorer on its embeddings", spec.to_dict()
    return run.results["score"], None, None


def _header(run: Run, scored_by: str) -> str:
    c = run.config
    title = html.escape(viz.run_title(c, run.run_id))
    return (
        f"<header><h1>Anomaly detection report · {title}</h1>"
        f"<p class=muted>Run <code>{html.escape(run.run_id)}</code> · trained {html.escape(str(c.get('created', '?')))}"
        f" · scored by {html.escape(scored_by)}</p></header>"
    )


def _setup(run: Run) -> str:
    c, data = run.config, run.config.get("data") or {}
    params = c.get("params") or {}
    augment = ", ".join(f"{name} ({_kv(p)})" if p else name for name, p in c.get("augmentations") or []) or "none"
    classes = ", ".join(data.get("defect_classes") or []) or "none (normal images only)"
    # The run's one total, each phase named beside it, as on the Train page.
    total = c.get("total_seconds", c.get("train_seconds"))
    trained = f"{viz.format_seconds(total)} ({viz.phase_line(c)})"
    if c.get("stopped_by_budget"):
        trained += f"; training stopped by the {c.get('budget_s'):g} s budget"
    skipped = c.get("skipped") or []
    versions = c.get("versions") or {}
    rows = [
        ("Method", f"{c.get('method', '?')}"),
        ("Parameters", _kv(params)),
        ("Augmentations", augment),
        ("Images", f"{data.get('n_fit', '?')} normal for training, {data.get('n_holdout', '?')} normal held out "
                   f"for the threshold, {data.get('n_test', '?')} test"),
        ("Defect classes", classes),
        ("Data", str(data.get("root") or data.get("path") or "?")),
        ("Device", str(c.get("device", "?"))),
        ("Run time", trained),
        ("Skipped files", f"{len(skipped)}" + (": " + ", ".join(s["rel_path"] for s in skipped[:5]) if skipped else "")),
        ("Versions", _kv(versions)),
    ]  # fmt: skip
    return _section("Set-up", _table_kv(rows))


def _results(run: Run, ctx: viz.ScoreContext, view: viz.ThresholdView, threshold: Threshold, scored_by: str) -> str:
    metrics = run.config.get("metrics") or {}
    stored = scored_by == "the method's own score"
    cards = []
    if ctx.real is not None:
        auroc = metrics.get("image_auroc") if stored else image_metrics(ctx.real.scores, ctx.real.is_anomaly)["image_auroc"]
        cards.append(("Image AUROC", "–" if auroc is None else f"{auroc:.3f}"))
    if metrics.get("pixel_auroc") is not None:
        cards.append(("Pixel AUROC", f"{metrics['pixel_auroc']:.3f}"))
    p = view.point
    if p is not None:
        cards += [
            ("Defects caught", f"{p.tp} of {p.tp + p.fn}"),
            ("False alarms", f"{p.fp} of {p.fp + p.tn}"),
            ("Precision", "–" if p.precision is None else format_percent(p.precision)),
            ("F1", "–" if p.f1 is None else f"{p.f1:.2f}"),
        ]
    estimate = view.estimate
    cards.append(("Expected false-alarm rate", format_percent(estimate.expected_rate)))
    body = '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{html.escape(k)}</div><div class="value">{html.escape(v)}</div></div>'
        for k, v in cards
    ) + "</div>"
    body += (
        f"<p><b>Threshold {threshold.value:.4g}</b>: {html.escape(threshold.how)}.</p>"
        f"<p>{html.escape(estimate.sentence)}</p>"
    )
    for warning in [*threshold.details.get("warnings", []), *estimate.warnings]:
        body += f'<p class="warn">{html.escape(warning)}</p>'
    if p is not None:
        label = "Confusion matrix on " + view.evaluation_label
        table = viz.confusion_table(p)
        body += f"<h3>{html.escape(label)}</h3>" + _table(
            ["actually", "flagged", "passed"],
            [[idx, int(r["flagged"]), int(r["passed"])] for idx, r in table.iterrows()],
        )
    recall_rows = [
        [r.group + (" (not real)" if r.synthetic else ""), r.n, r.caught, format_percent(r.recall)]
        for r in view.recalls
    ]
    if recall_rows:
        body += "<h3>What the threshold catches</h3>" + _table(["defects", "images", "caught", "recall"], recall_rows)
    caveat = synthetic_caveat(run) if any(r.synthetic for r in view.recalls) else None
    if caveat:
        body += f'<p class="warn">{html.escape(caveat)}</p>'
    group_rows = [[g["group"], g["images"], g["flagged"], g["flagged means"]] for g in view.group_rows]
    body += "<h3>Flagged per group</h3>" + _table(["group", "images", "flagged", "flagged means"], group_rows)
    return _section("Results", body)


def _embedding_section(run: Run, ctx: viz.ScoreContext, figures: "_Figures") -> str:
    if "embedding" not in run.results:
        return _section("Embedding map", _caption("This method gives no embeddings, so there is no map."))
    n = len(run.results["embedding"])
    if n > MAX_MAP_POINTS:
        return _section("Embedding map", _caption(f"Left out: {n} images are too many for a t-SNE in a report."))
    coords = project_run(run, "tsne", 2)
    groups = map_groups(run)
    figure = viz.embedding_figure(coords, groups, group_order(groups), ctx.scores, ctx.names, height=520)
    return _section(
        "Embedding map (t-SNE)",
        figures.add(figure),
        _caption("Each point is an image's embedding, placed so that similar images lie close together."),
    )


def _top_anomalies(run: Run, ctx: viz.ScoreContext, threshold: Threshold, k: int) -> str:
    """The k highest-scoring images the model was not trained on, with their heat maps."""
    candidates = np.concatenate([ctx.normal_rows, ctx.real_defect_rows])
    if not candidates.size:
        candidates = ctx.reference_rows
    rows = candidates[np.argsort(-ctx.scores[candidates], kind="stable")[:k]]
    maps = run.results.get("anomaly_map")
    display = map_display_range(run) if maps is not None else None
    records = _records(run)
    tiles = []
    for row in rows:
        tiles.append(_anomaly_tile(run, ctx, int(row), threshold, maps, display, records))
    note = "Original with the ground-truth defect outlined in red (where a mask exists)"
    if maps is not None:
        note += "; heat map on a fixed scale: dark = like normal images, bright = hotter than any hold-out normal pixel"
    return _section(f"Top {len(rows)} anomalies", '<div class="tiles">' + "".join(tiles) + "</div>", _caption(note + "."))


def _anomaly_tile(run, ctx, row, threshold, maps, display, records) -> str:
    name = ctx.names[row]
    score = float(ctx.scores[row])
    flagged = bool(is_anomalous(score, threshold.value))
    group = viz.group_label(str(ctx.groups[row]))
    pictures = []
    try:
        image = viz.run_row_image(run, row)
    except ImageError as exc:
        image, missing = None, str(exc)
    if image is not None:
        small = viz.fit_size(image, PICTURE_SIDE)
        mask = _mask(records.get(str(run.results["rel_path"][row])))
        if mask is not None and mask.any():
            truth = viz.fit_size(mask.astype(np.uint8) * 255, PICTURE_SIDE, nearest=True) > 127
            small = viz.draw_mask_outline(small, truth, thickness=2) if truth.any() else small
        pictures.append(_img(small, f"{name}"))
        if maps is not None:
            low, high = display["low"], display["high"]
            heat = viz.overlay_heatmap(viz.fit_size(image, PICTURE_SIDE), np.asarray(maps[row], np.float32), 0.55,
                                       low=low, high=high)  # fmt: skip
            pictures.append(_img(heat, f"heat map of {name}"))
    else:
        pictures.append(f'<div class="missing">image not readable: {html.escape(missing)}</div>')
        if maps is not None:
            heat = viz.heatmap_rgb(viz.resize_map(maps[row], (PICTURE_SIDE, PICTURE_SIDE)), display["low"], display["high"])
            pictures.append(_img(heat, f"stored heat map of {name}"))
    verdict = "flagged" if flagged else "passed"
    return (
        f'<figure class="tile"><div class="pics">{"".join(pictures)}</div>'
        f"<figcaption><b>{html.escape(name)}</b><br>{html.escape(group)} · score {score:.4g} · "
        f'<span class="{verdict}">{verdict}</span></figcaption></figure>'
    )


def _records(run: Run) -> dict:
    root = viz.run_data_root(run.config)
    if root is None or not Path(root).is_dir():
        return {}
    try:
        return {r.rel_path: r for r in open_image_set(root).records}
    except (ValueError, OSError):
        return {}


def _mask(record) -> np.ndarray | None:
    if record is None:
        return None
    try:
        return load_mask(record)
    except ImageError:
        return None


# --- HTML pieces ----------------------------------------------------------------------------------


class _Figures:
    """Plotly figures as HTML: the first carries plotly.js itself (inline, so no network is needed)."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, figure: go.Figure) -> str:
        self.count += 1
        return figure.to_html(
            full_html=False,
            include_plotlyjs=self.count == 1,
            config={"displaylogo": False, "responsive": True},
            div_id=f"figure-{self.count}",
        )


def _img(image: np.ndarray, alt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kv(mapping: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in mapping.items())


def _table_kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *body: str) -> str:
    return f"<section><h2>{html.escape(title) if '<' not in title else title}</h2>{''.join(body)}</section>"


def _caption(text: str) -> str:
    return f'<p class="muted">{html.escape(text)}</p>'


def _footer() -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f'<footer class="muted">Made with adcore {adcore.__version__} on {when}.</footer>'


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:24px 32px;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin:0 0 4px}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:32px}h3{font-size:1rem;margin:18px 0 6px}
.muted{color:#59636e;font-size:.92rem}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;
border-radius:6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:4px 10px;text-align:left;
font-size:.92rem}thead th{background:#f6f8fa}table.kv th{background:#f6f8fa;width:160px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0 14px}.card{border:1px solid #d0d7de;border-radius:8px;
padding:8px 14px;min-width:120px}.card .label{font-size:.8rem;color:#59636e}.card .value{font-size:1.4rem;
font-weight:600}
.row{display:flex;flex-wrap:wrap}.row>div{flex:1 1 420px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:14px}
.tile{margin:0;border:1px solid #d0d7de;border-radius:8px;padding:8px}.pics{display:flex;gap:6px;
align-items:flex-start}.pics img{max-width:240px;height:auto}.tile figcaption{font-size:.85rem;margin-top:4px;
word-break:break-all}
.flagged{color:#b42318;font-weight:600}.passed{color:#1a7f37;font-weight:600}
.missing{width:240px;height:120px;background:#eee;font-size:.8rem;padding:6px}
footer{margin-top:36px}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
"""


# A figure is drawn as soon as its script is read, before the figures after it exist: one that shares
# a row with the next one was sized for the whole row and would hide under its neighbour. Once the
# page is complete every figure is sized again to the box it really has.
RESIZE_SCRIPT = (
    "window.addEventListener('load',function(){document.querySelectorAll('.js-plotly-plot')"
    ".forEach(function(f){Plotly.Plots.resize(f);});});"
)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} · anomaly detection report</title>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>{body}<script>{RESIZE_SCRIPT}</script></body></html>\n"
    )
