"""What one threshold-slider move costs on the Scores page: prints a table (run: python benchmarks/threshold_page.py).

A move reruns only the page's threshold fragment, which calls ``adcore.viz.threshold_view`` (counts,
reliability sentence, recall per defect group, the score-distribution, ROC and PR figures and the
gallery rows) and hands three figures to Streamlit, which serialises them to JSON. This times those
steps on an in-memory run of 10,000 synthetic scores (plus 100,000 for scale). The once-per-run work
(grouping the rows, sorting, ROC/PR curves: ``score_context``) is timed separately: Streamlit keeps it
in a cache. Budget: a move well under 0.5 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import plotly.io as pio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adcore import viz  # noqa: E402
from adcore.runs import Run  # noqa: E402
from adcore.threshold import (  # noqa: E402
    f1_optimal_threshold,
    false_alarm_estimate,
    threshold_for_false_alarm_rate,
    threshold_for_recall,
)

BUDGET_S = 0.5


def synthetic_run(n: int, seed: int = 0) -> Run:
    """A run of n rows in the proportions of a real one: 60 % training normals, 15 % hold-out,
    10 % test normals, 10 % test defects of 4 classes, 5 % synthetic defects."""
    rng = np.random.default_rng(seed)
    parts = [("fit", "good", 0.60, 0.0), ("holdout", "good", 0.15, 0.2), ("test", "good", 0.10, 0.3)]
    parts += [("test", c, 0.025, 1.5 + i * 0.3) for i, c in enumerate(("crack", "dent", "scratch", "stain"))]
    parts += [("synthetic", "synthetic cutpaste", 0.025, 2.0), ("synthetic", "synthetic cutpaste scar", 0.025, 1.0)]
    role, label, score = [], [], []
    for r, lab, share, shift in parts:
        k = int(round(n * share))
        role += [r] * k
        label += [lab] * k
        score.append(rng.normal(shift, 1.0, k))
    m = len(role)
    results = {
        "rel_path": np.array([f"img/{i:06d}.png" for i in range(m)]),
        "split": np.array(["test" if r == "test" else "train" for r in role]),
        "label": np.array(label),
        "role": np.array(role),
        "score": np.concatenate(score),
    }
    return Run(Path("/nonexistent-run"), {"method": "synthetic", "params": {}}, [], results)


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    columns = ("images", "context (once)", "counts+sentence", "3 thresholds", "view (all)", "to JSON", "one move")
    print(" | ".join(f"{c:>15}" for c in columns))
    print("-" * (18 * len(columns)))
    for n in (10_000, 100_000):
        run = synthetic_run(n)
        context_s = best_of(lambda: viz.score_context(run), repeat=3)
        ctx = viz.score_context(run)
        reference = ctx.scores[ctx.reference_rows]
        thresholds = iter(np.tile(np.linspace(-1, 4, 50), 20))

        def counts() -> None:
            t = next(thresholds)
            ctx.real.at(t)
            false_alarm_estimate(reference, t)

        def target() -> None:
            threshold_for_false_alarm_rate(reference, 0.05, source=ctx.reference_source)
            # The page's shortcut buttons are recomputed on every move as well.
            f1_optimal_threshold(ctx.real.scores, ctx.real.is_anomaly)
            threshold_for_recall(ctx.real.scores, ctx.real.is_anomaly, 0.9)

        def view():
            return viz.threshold_view(ctx, next(thresholds))

        first = view()
        figures = (first.distribution, first.roc, first.pr)

        def to_json() -> None:
            for fig in figures:
                pio.to_json(fig, validate=False)

        def move() -> None:
            target()
            v = view()
            for fig in (v.distribution, v.roc, v.pr):
                pio.to_json(fig, validate=False)

        view_s, json_s, move_s = best_of(view), best_of(to_json), best_of(move)
        cells = [context_s, best_of(counts), best_of(target), view_s, json_s, move_s]
        print(f"{n:>15,} | " + " | ".join(f"{c * 1e3:>12.1f} ms" for c in cells))
        if n == 10_000:
            verdict = "OK" if move_s < BUDGET_S else "TOO SLOW"
            ten_k = f"10,000 scores: one slider move takes {move_s * 1e3:.0f} ms of {BUDGET_S * 1e3:.0f} ms: {verdict}"
    print(
        "\ncontext: once per run (cached by the page). 3 thresholds: the false-alarm-target one and the "
        "best-F1 and 90 %-recall shortcuts.\none move = 3 thresholds + threshold_view + JSON of the three "
        "figures: all that a slider move computes."
    )
    print(ten_k)


if __name__ == "__main__":
    main()
