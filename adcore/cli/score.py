"""``python -m adcore score``: score a folder or zip of any size with a run or an exported model file.

One CSV row per image (path, score, decision; split and label in an MVTec layout), images decoded
batch by batch so memory stays flat, optional heat-map PNGs, unreadable files listed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a folder or zip of images with a trained run or an exported model file",
        description=(
            "Score every image of a folder or .zip (decoded batch by batch, so any size works) and "
            "write one CSV row per image: path (relative to --images), score (higher = more anomalous), "
            "decision (anomalous/normal at the model's threshold), and split/label in an MVTec layout. "
            "Files that cannot be read are listed at the end; they do not stop the run."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `train` or the app (its chosen or default threshold)")
    source.add_argument("--model", help="model file written by `export` (threshold: the exported one)")
    p.add_argument("--images", required=True, help="folder or zip of images (any layout)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--maps", default=None, metavar="DIR", help="also write a heat-map PNG per image under DIR")
    p.add_argument(
        "--maps-style",
        choices=("overlay", "heatmap"),
        default="overlay",
        help="heat map blended over the image (default) or the heat map alone",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images decoded and scored at a time")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adcore.batch import ScoreSummary, open_images, partial_path, score_to_csv
    from adcore.device import pick_device
    from adcore.export import load_model, model_from_run

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = pick_device(args.device)
    model = load_model(args.model, device=device) if args.model else model_from_run(args.run, device=device)
    threshold = model.threshold

    summary = ScoreSummary()
    try:
        with open_images(args.images) as listing:
            with tqdm(total=listing.count, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
                score_to_csv(
                    model,
                    listing,
                    args.out,
                    batch_size=args.batch_size,
                    maps_dir=args.maps,
                    map_overlay=args.maps_style == "overlay",
                    on_batch=bar.update,
                    summary=summary,
                )
    except BaseException:
        if summary.scored:  # say where the work done so far is, then fail as before
            print(f"stopped after {summary.scored} image(s): their rows are in {partial_path(args.out)}",
                  file=sys.stderr)  # fmt: skip
        raise

    print(f"scored {summary.scored} image(s) -> {args.out}")
    print(
        f"  {summary.anomalous} anomalous, {summary.scored - summary.anomalous} normal at threshold "
        f"{threshold.value:.6g} (anomalous if score >= threshold; {threshold.how})"
    )
    if args.maps:
        if summary.has_maps is False:
            print(f"  no heat maps: method {model.method.name} does not produce anomaly maps")
        else:
            print(f"  {summary.maps_written} heat map(s) -> {Path(args.maps)}")
    if summary.skipped:
        print(f"  {len(summary.skipped)} file(s) not scored:")
    for skipped in summary.skipped:
        print(f"  skipped {skipped.rel_path}: {skipped.reason}")
    if summary.scored == 0:
        print(f"error: no image in {args.images} could be scored", file=sys.stderr)
        return 1
    return 0
