"""``python -m adcore score``: score a folder or zip of any size with a run or an exported model file.

One CSV row per image (path, score, decision; split and label in an MVTec layout), images decoded
batch by batch so memory stays flat, optional heat-map PNGs, unreadable files listed at the end.
An interrupted job started again with the same --out goes on where it stopped; ``--engine ray``
scores the same batches on Ray Data workers (``adcore.ray_engine``) into the same CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from types import SimpleNamespace
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a folder or zip of images with a trained run or an exported model file",
        description=(
            "Score every image of a folder, a .zip or a .txt list of paths (decoded batch by batch, so any size "
            "works) and write one CSV row per image: path (relative to --images, or as the list writes it), "
            "score (higher = more anomalous), "
            "decision (anomalous/normal at the model's threshold), and split/label in an MVTec layout. "
            "Files that cannot be read are listed at the end; they do not stop the run."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `train` or the app (its chosen or default threshold)")
    source.add_argument("--model", help="model file written by `export` (threshold: the exported one)")
    p.add_argument(
        "--images", required=True, help="folder or zip of images (any layout), or a .txt file of image paths, one a line"
    )
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
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray Data workers (Ray is an optional extra)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --engine ray: a running Ray cluster (images, run/model and --maps on storage every node "
        "reads); default: start a local instance on this machine",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --engine ray: scoring workers, each loading the model once (default: one per GPU, else per CPU)",
    )
    p.set_defaults(func=run)


def _progress_bar(total: int):
    """A tqdm bar where tqdm is installed; a scoring PC with only numpy, Pillow and onnxruntime gets none."""
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(SimpleNamespace(update=lambda n: None))
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def run(args: argparse.Namespace) -> int:
    from adcore.batch import ScoreSummary, open_images, partial_path, score_to_csv
    from adcore.onnx_model import is_onnx_file, load_onnx_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.engine != "ray" and (args.ray_address or args.workers is not None):
        raise ValueError("--ray-address and --workers go with --engine ray")
    onnx = bool(args.model) and is_onnx_file(args.model)
    if onnx and args.engine == "ray":
        raise ValueError("an ONNX model is scored by the local engine (onnxruntime); --engine ray takes runs and .adcore files")
    if args.engine == "ray":
        from adcore.ray_engine import RayNotInstalled, import_ray

        try:
            import_ray()
        except RayNotInstalled as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if onnx:  # torch is never imported on this path
        source, model = None, load_onnx_model(args.model)
    else:
        from adcore.ray_engine import ModelSource

        source = ModelSource("model", args.model, args.device) if args.model else ModelSource("run", args.run, args.device)
        model = source.load()
    threshold = model.threshold

    summary = ScoreSummary()
    try:
        with open_images(args.images) as listing:
            with _progress_bar(listing.count) as bar:
                options = dict(
                    batch_size=args.batch_size,
                    maps_dir=args.maps,
                    map_overlay=args.maps_style == "overlay",
                    on_batch=bar.update,
                    summary=summary,
                )
                if args.engine == "ray":
                    from adcore.ray_engine import score_on_ray

                    score_on_ray(model, source, listing, args.out, address=args.ray_address, workers=args.workers,
                                 **options)  # fmt: skip
                else:
                    score_to_csv(model, listing, args.out, **options)
    except BaseException:
        if summary.scored:  # say where the work done so far is, then fail as before
            print(f"stopped after {summary.scored} image(s): their rows are in {partial_path(args.out)}; "
                  "the same command goes on from there", file=sys.stderr)  # fmt: skip
        raise

    resumed = f" ({summary.resumed} of them by an earlier, interrupted run)" if summary.resumed else ""
    print(f"scored {summary.scored} image(s) -> {args.out}{resumed}")
    print(
        f"  {summary.anomalous} anomalous, {summary.scored - summary.anomalous} normal at threshold "
        f"{threshold.value:.6g} (anomalous if score >= threshold; {threshold.how})"
    )
    if args.maps:
        if summary.has_maps is False:
            print(f"  no heat maps: method {model.config['method']['name']} does not produce anomaly maps")
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
