"""``python -m adcore score``: score images with a saved run, one CSV row per image."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score a folder or zip of images with a trained run")
    p.add_argument("--run", required=True, help="run folder written by `train` or the app")
    p.add_argument("--images", required=True, help="folder or zip of images (any layout)")
    p.add_argument("--out", required=True, help="CSV file to write (columns: path, score, split, label)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adcore.data import ImageError, load_image, open_image_set
    from adcore.device import pick_device
    from adcore.runs import load_run

    method = load_run(args.run).load_method(pick_device(args.device))
    image_set = open_image_set(args.images)
    records = image_set.records
    failed = [(s.rel_path, s.reason) for s in image_set.skipped]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    written = 0
    with tmp.open("w", newline="") as fh, tqdm(total=len(records), unit="img", file=sys.stderr) as bar:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "split", "label"])
        for start in range(0, len(records), args.batch_size):
            batch, images = [], []
            for rec in records[start : start + args.batch_size]:
                try:
                    images.append(load_image(rec.path))
                    batch.append(rec)
                except ImageError as exc:
                    failed.append((rec.rel_path, str(exc)))
            if images:
                for rec, s in zip(batch, method.score(images, batch_size=args.batch_size)):
                    writer.writerow([rec.rel_path, f"{s:.6g}", rec.split, rec.label])
                written += len(batch)
            bar.update(len(records[start : start + args.batch_size]))
    tmp.replace(out)
    print(f"scored {written} image(s) -> {out}")
    for rel, reason in failed:
        print(f"  skipped {rel}: {reason}")
    return 0
