"""``python -m adcore report --run RUN_DIR --out report.html``: a self-contained HTML report of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one HTML file with the run's set-up, metrics, threshold, score distributions, "
        "confusion matrix, embedding map and top anomalies with heat maps. It needs no network to open.",
    )
    p.add_argument("--run", required=True, type=Path, help="run folder (from train or the dashboard)")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--top", type=int, default=8, help="how many of the most anomalous images to show (default 8)")
    p.add_argument("--no-map", action="store_true", help="leave out the t-SNE embedding map (faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adcore.report import write_report

    if args.top < 0:
        raise ValueError("--top must be 0 or more")
    out = write_report(args.run, args.out, top_k=args.top, embedding_map=not args.no_map)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
