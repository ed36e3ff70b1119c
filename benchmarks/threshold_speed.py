"""How long a threshold slider move costs: prints one row per set size (run: python benchmarks/threshold_speed.py).

A query (``ScoreTable.at``) must stay well under 0.5 s; it is two binary searches, so microseconds.
Building the table (one sort) and the ROC/PR curves happen once per run and are shown for scale, as
is the reliability sentence (``false_alarm_estimate``: a sort of the hold-out scores and three Beta
quantiles) that the page recomputes when the slider moves.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adcore.threshold import ScoreTable, false_alarm_estimate, threshold_for_false_alarm_rate  # noqa: E402


def per_call(fn, number: int) -> float:
    """Best of 3 repeats, seconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=3)) / number


def main() -> None:
    rng = np.random.default_rng(0)
    header = (
        f"{'images':>8} | {'query at()':>11} | {'query, 100 at once':>18} | {'build table':>11} | "
        f"{'ROC+PR once':>11} | {'reliability':>11} | {'FAR threshold':>13}"
    )
    print(header)
    print("-" * len(header))
    for n in (10_000, 100_000):
        is_anomaly = rng.random(n) < 0.1
        scores = rng.normal(size=n) + 2.0 * is_anomaly
        table = ScoreTable(scores, is_anomaly)
        holdout = scores[~is_anomaly][: n // 5]
        slider = iter(np.tile(rng.uniform(-3, 5, 10_000), 100))  # a new threshold every call
        many = rng.uniform(-3, 5, 100)

        def roc_pr() -> None:
            fresh = ScoreTable(scores, is_anomaly)
            fresh.roc, fresh.pr

        cells = [
            f"{per_call(lambda: table.at(next(slider)), 20_000) * 1e6:>8.1f} µs",
            f"{per_call(lambda: table.counts(many), 2_000) * 1e6:>15.1f} µs",
            f"{per_call(lambda: ScoreTable(scores, is_anomaly), 5) * 1e3:>8.2f} ms",
            f"{per_call(roc_pr, 3) * 1e3:>8.2f} ms",
            f"{per_call(lambda: false_alarm_estimate(holdout, 1.5), 20) * 1e3:>8.2f} ms",
            f"{per_call(lambda: threshold_for_false_alarm_rate(holdout, 0.05), 20) * 1e3:>10.2f} ms",
        ]
        print(f"{n:>8,} | " + " | ".join(cells))
    print("\nquery at(): one slider move (confusion counts and rates); 0.5 s budget -> "
          "all figures above are far below it.")


if __name__ == "__main__":
    main()
