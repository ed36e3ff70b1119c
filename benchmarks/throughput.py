"""Batch-scoring throughput of every registered method next to a bare ResNet-18 forward pass; prints a table.

    python benchmarks/throughput.py                      # train each method briefly on sample_data/
    python benchmarks/throughput.py --run runs/RUN_ID    # benchmark existing runs instead (repeatable)

For each method, at its default image size (or the run's) and the same batch size:
  * ``batch img/s``: ``adcore.batch.score_to_csv`` over a folder (default sample_data/test, 50
    images of 256x256), as ``score`` runs it: decoding one batch ahead, the method's predict
    (maps upsampled to each image's size), CSV rows; no heat-map PNGs;
  * ``model img/s``: ``method.predict`` on images already decoded (the method alone);
  * ``resnet18 img/s``: torchvision ResNet-18 (random init, eval, inference mode) on random tensors of
    that size and batch, in the same process: a yardstick for the machine;
  * ``ratio``: model img/s / resnet18 img/s (above 1 = cheaper than a ResNet-18 forward).
Timings are taken after one warm-up batch, best of ``--repeats`` passes (default 1). Keep runs
short on shared machines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adcore.batch import list_images, score_to_csv  # noqa: E402
from adcore.data import load_image  # noqa: E402
from adcore.device import pick_device  # noqa: E402
from adcore.loaded_model import LoadedModel, model_from_run  # noqa: E402
from adcore.methods import FitContext, build_method, list_methods  # noqa: E402
from adcore.threshold import Threshold  # noqa: E402


def best_rate(fn, n_images: int, repeats: int) -> float:
    """Images per second of ``fn()`` processing ``n_images``, best of ``repeats`` timed passes."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def resnet18_rate(size: int, batch: int, n_images: int, device: torch.device, repeats: int) -> float:
    from torchvision.models import resnet18

    net = resnet18(weights=None).eval().to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    n_batches = max(1, n_images // batch)

    def forward() -> None:
        with torch.inference_mode():
            for _ in range(n_batches):
                net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()

    with torch.inference_mode():
        net(x)  # warm-up
    return best_rate(forward, n_batches * batch, repeats)


def train_briefly(
    name: str, data: Path, budget_s: float, n_fit: int, device: torch.device
) -> tuple[LoadedModel, float]:
    """The method with default parameters, fitted on ``n_fit`` normal images for at most ``budget_s``
    (plus whatever a one-pass method needs to finish its pass)."""
    paths = sorted((data / "train" / "good").iterdir())[:n_fit]
    method = build_method(name)
    t0 = time.perf_counter()
    method.fit([load_image(p) for p in paths], FitContext(device=device, budget_s=budget_s))
    no_decision = Threshold(float("inf"), "benchmark: no decision", {})
    return LoadedModel(data, method, no_decision, {"map_display": None}), time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], help="run folder to benchmark (repeatable)")
    parser.add_argument("--data", default=str(REPO / "sample_data"), help="MVTec folder: train/good is fitted on")
    parser.add_argument("--images", default=None, help="folder to score (default: DATA/test)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=10.0, help="training seconds per method (without --run)")
    parser.add_argument("--n-fit", type=int, default=32, help="normal images to fit on when training")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = pick_device(args.device)
    data = Path(args.data)
    listing = list_images(args.images or data / "test")
    images = [load_image(e.path) for e in listing]
    n = len(images)

    candidates = []  # (label, model, seconds trained or None)
    if args.run:
        for run_dir in args.run:
            model = model_from_run(run_dir, device)
            candidates.append((f"{model.method.name} ({Path(run_dir).name})", model, None))
    else:
        for cls in list_methods():
            print(f"training {cls.name} for at most {args.budget_s:.0f} s...", file=sys.stderr)
            model, seconds = train_briefly(cls.name, data, args.budget_s, args.n_fit, device)
            candidates.append((cls.name, model, seconds))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scores.csv"
        for label, model, trained_s in candidates:
            size, batch = model.method.config_["image_size"], args.batch_size
            print(f"timing {label} at {size}x{size}, batch {batch}, {n} images...", file=sys.stderr)
            model.predict(images[:batch], batch_size=batch)  # warm-up
            model_rate = best_rate(lambda: model.predict(images, batch_size=batch), n, args.repeats)

            def to_csv() -> None:
                score_to_csv(model, listing, out, batch_size=batch)

            batch_rate = best_rate(to_csv, n, args.repeats)
            resnet = resnet18_rate(size, batch, n, device, args.repeats)
            trained = "-" if trained_s is None else f"{trained_s:.1f}"
            rows.append((label, f"{size}", f"{batch}", trained, f"{batch_rate:.1f}", f"{model_rate:.1f}",
                         f"{resnet:.1f}", f"{model_rate / resnet:.2f}"))

    header = ("method", "size", "batch", "train s", "batch img/s", "model img/s", "resnet18 img/s", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"\ndevice {device} (torch threads: {threads}); {n} images of {listing.folder}; best of {args.repeats}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
