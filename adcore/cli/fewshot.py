"""``python -m adcore fewshot``: a random forest on a run's anomaly-map histograms, cross-validated."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fewshot",
        help="cross-validate a classifier on a run's anomaly-map histograms (needs labelled defects)",
        description="Learn from the labelled defect and normal images of a run (hold-out and test, never "
        "the images it was trained on) with a random forest on histograms of their anomaly maps; "
        "stratified cross-validation over images, so no image is scored by a forest fitted on it.",
    )
    p.add_argument("--run", required=True, help="run folder (made by `train` or the app)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (fewer if there are fewer defects)")
    p.add_argument("--bins", type=int, default=16, help="histogram bins")
    p.add_argument("--synthetic", action="store_true", help="also learn from the run's synthetic defects")
    p.add_argument("--seed", type=int, default=0, help="random seed of the folds and the forest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adcore.fewshot import cross_validate, format_table
    from adcore.runs import load_run

    result = cross_validate(
        load_run(args.run).results, folds=args.folds, bins=args.bins, seed=args.seed,
        include_synthetic=args.synthetic,
    )
    print(format_table(result))
    return 0
