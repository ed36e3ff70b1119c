"""``python -m adcore export``: write a run as one self-contained model file (see ``adcore.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run as one model file (weights, config, preprocessing, threshold)",
        description=(
            "Write a run as one safetensors file holding the method's weights, its parameters and "
            "preprocessing, the decision threshold and the versions it was made with, with a SHA-256 "
            "digest over the whole file. Score with it: python -m adcore score --model FILE ..."
        ),
    )
    p.add_argument("--run", required=True, help="run folder written by `train` or the app")
    p.add_argument("--out", required=True, help="model file to write (suggested extension .adcore)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold to store (default: the run's saved one if it was chosen for the scores the "
        "file gives, else adcore.threshold's default: a 5 %% target false-alarm rate on the run's hold-out "
        "normal images, on those scores)",
    )
    p.add_argument(
        "--scorer",
        default=None,
        help="score images with this embedding scorer (see adcore.scoring) fitted on the run's embeddings "
        "instead of the method's own score (default: the run's scorer, if it has one)",
    )
    p.add_argument(
        "--scorer-param", action="append", default=[], metavar="KEY=VALUE", help="scorer parameter, repeatable"
    )
    p.add_argument(
        "--format",
        choices=("adcore", "onnx"),
        default="adcore",
        help="adcore: the full-fidelity safetensors model file (default); onnx: an ONNX graph of the method's "
        "inference that `score --model FILE.onnx` runs with onnxruntime, without torch (requirements-onnx.txt)",
    )
    p.add_argument(
        "--photo-size",
        default=None,
        metavar="HxW",
        help="with --format onnx and a method that keeps the photos' aspect ratio: the size of the photos the "
        "model will score (default: the run's first training photo's)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """ "HxW" -> (H, W) in pixels, both positive."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.strip().isdigit() or not width.strip().isdigit() or not int(height) or not int(width):
        raise ValueError(f"--photo-size expects HxW in pixels, e.g. 480x640, got {text!r}")
    return int(height), int(width)


def run_onnx(args: argparse.Namespace, out: Path, threshold) -> int:
    from adcore.onnx_export import export_onnx
    from adcore.onnx_model import load_onnx_model
    from adcore.runs import load_run

    if args.scorer:
        raise ValueError("--scorer cannot be exported to ONNX (its scikit-learn scorers have no graph); "
                         "export the method's own score, or use --format adcore")  # fmt: skip
    photo_size = parse_size(args.photo_size) if args.photo_size else None
    run = load_run(args.run)
    export_onnx(run, out, threshold=threshold, photo_size=photo_size)
    model = load_onnx_model(out)  # read back: what was written opens and names its format
    cfg = model.config
    data = out.with_name(out.name + ".data")
    extra = f" + {data.name} ({data.stat().st_size / 1024**2:.1f} MiB of weights)" if data.exists() else ""
    print(f"ONNX model written to {out} ({out.stat().st_size / 1024:.1f} KiB{extra})")
    h, w = model.input_shape
    print(f"  method {cfg['method']['name']}, network input {h}x{w}, resize: {cfg['preprocessing']['resize']['mode']}")
    if run.config.get("scorer"):
        print("  note: the run's embedding scorer is not part of an ONNX export; the model gives the method's own score")
    print(f"  threshold {model.threshold.value:.6g}: {model.threshold.how}; anomalous if score >= threshold")
    for warning in model.threshold.details.get("warnings", []):
        print(f"  note: {warning}")
    return 0


def run(args: argparse.Namespace) -> int:
    from adcore.export import ScorerSpec, export_run
    from adcore.loaded_model import load_model
    from adcore.runs import load_run
    from adcore.scoring import SCORERS
    from adcore.threshold import Threshold

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"--out {out} already exists; choose a new name or pass --force")
    if args.scorer_param and not args.scorer:
        raise ValueError("--scorer-param needs --scorer")
    scorer = None
    if args.scorer:
        specs = {p.name: p for p in SCORERS.get(args.scorer).params}
        params = {}
        for pair in args.scorer_param:
            key, sep, value = pair.partition("=")
            if not sep or key not in specs:
                known = ", ".join(specs) or "none"
                raise ValueError(f"scorer {args.scorer}: bad --scorer-param {pair!r}; it has: {known}")
            params[key] = specs[key].parse(value)
        scorer = ScorerSpec(args.scorer, params)
    threshold = None
    if args.threshold is not None:
        threshold = Threshold(args.threshold, "set by hand (export --threshold)", {"rule": "manual"})
    if args.format == "onnx":
        return run_onnx(args, out, threshold)
    if args.photo_size:
        raise ValueError("--photo-size goes with --format onnx")
    export_run(load_run(args.run), out, threshold=threshold, scorer=scorer)
    model = load_model(out, device="cpu")  # read back: what was written verifies and loads
    cfg = model.config
    print(f"model written to {out} ({out.stat().st_size / 1024:.1f} KiB)")
    print(f"  method {cfg['method']['name']}, image size {cfg['method']['params']['image_size']}")
    if cfg["scorer"]:
        print(f"  image score: {cfg['scorer']['name']} scorer on the method's embeddings")
    print(f"  threshold {model.threshold.value:.6g}: {model.threshold.how}; anomalous if score >= threshold")
    for warning in model.threshold.details.get("warnings", []):
        print(f"  note: {warning}")
    return 0
