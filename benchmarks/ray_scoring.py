"""Batch-scoring images/s of the local engine and of Ray (1 and 2 workers) on this machine; prints a table.

    python benchmarks/ray_scoring.py                          # PatchCore trained on sample_data/, 200 images
    python benchmarks/ray_scoring.py --run runs/RUN_ID --count 400 --photo-size 2448x2048

The scored set is generated in a temporary folder (nothing is committed): the images of
sample_data/test repeated up to ``--count``, as they are or re-encoded as JPEGs of ``--photo-size``
(to include the decoding of real camera photos). Each engine scores it into a CSV exactly as
``python -m adcore score`` does (a local Ray instance is started and stopped per Ray row); the CSVs
must be identical, byte for byte, or the benchmark fails.

Columns: ``wall img/s`` (images / the whole call, Ray start-up and model loading included),
``steady img/s`` (images after the first batch / the time after it: the rate a long job runs at), and
``per worker`` (steady / workers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from adcore.batch import list_images, score_to_csv  # noqa: E402
from adcore.ray_engine import ModelSource, score_on_ray  # noqa: E402
from adcore.training import TrainSpec, train_run  # noqa: E402


def make_set(folder: Path, count: int, photo_size: tuple[int, int] | None) -> Path:
    """``count`` images from sample_data/test (repeated), plain layout, optionally resized JPEGs."""
    sources = sorted((REPO / "sample_data" / "test").rglob("*.jpg"))
    folder.mkdir(parents=True)
    for i in range(count):
        src = sources[i % len(sources)]
        target = folder / f"{i:06d}.jpg"
        if photo_size is None:
            shutil.copyfile(src, target)
        else:
            Image.open(src).convert("RGB").resize(photo_size, Image.BILINEAR).save(target, quality=90)
    return folder


def timed(score, n_images: int) -> tuple[float, float]:
    """(wall img/s, steady img/s after the first batch) of ``score(on_batch)``."""
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    score(lambda n: marks.append((time.perf_counter(), n)))
    wall = time.perf_counter() - t0
    (first_t, first_n), last_t = marks[0], marks[-1][0]
    steady = (n_images - first_n) / (last_t - first_t) if len(marks) > 1 else float("nan")
    return n_images / wall, steady


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="a run folder (default: train --method on sample_data/ first)")
    source.add_argument("--model", help="an exported model file")
    parser.add_argument("--method", default="patchcore", help="method to train when no --run/--model is given")
    parser.add_argument("--count", type=int, default=200, help="images to score")
    parser.add_argument("--photo-size", default=None, metavar="WxH", help="re-encode the images at this size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="Ray pool sizes to measure")
    args = parser.parse_args()
    photo_size = tuple(int(v) for v in args.photo_size.split("x")) if args.photo_size else None

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as scratch:
        scratch = Path(scratch)
        if args.model or args.run:
            src = ModelSource("model" if args.model else "run", args.model or args.run, "cpu")
        else:
            print(f"training {args.method} on sample_data/ ...", file=sys.stderr)
            run = train_run(TrainSpec(data=str(REPO / "sample_data"), method=args.method), scratch / "runs")
            src = ModelSource("run", str(run), "cpu")
        model = src.load()
        listing = list_images(make_set(scratch / "images", args.count, photo_size))
        shape = "x".join(map(str, photo_size)) if photo_size else "256x256 (sample_data)"
        options = {"batch_size": args.batch_size}

        engines = [("local", 1, lambda out, cb: score_to_csv(model, listing, out, on_batch=cb, **options))]
        for n in (int(w) for w in args.workers.split(",")):
            engines.append((f"ray, {n} worker{'s' if n > 1 else ''}", n, lambda out, cb, n=n: score_on_ray(
                model, src, listing, out, workers=n, on_batch=cb, **options)))  # fmt: skip

        print(f"{model.method.name}, {listing.count} images of {shape}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPU core(s)")  # fmt: skip
        print(f"{'engine':<16} {'wall img/s':>11} {'steady img/s':>13} {'per worker':>11}")
        reference = None
        for name, workers, score in engines:
            out = scratch / f"{name.replace(' ', '').replace(',', '-')}.csv"
            wall, steady = timed(lambda cb: score(out, cb), listing.count)
            print(f"{name:<16} {wall:>11.1f} {steady:>13.1f} {steady / workers:>11.1f}", flush=True)
            reference = reference or out.read_bytes()
            if out.read_bytes() != reference:
                print(f"error: {name} wrote a different CSV from the local engine", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
