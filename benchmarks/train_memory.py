"""Peak memory (RSS) and time of ``python -m adcore train`` on N normal 5-MP photos; prints a table.

    python benchmarks/train_memory.py                       # 200 and 400 photos, the default method
    python benchmarks/train_memory.py --counts 200 400 1000 --method patchcore

The photos are generated once under ``--photos`` (default /tmp/adcore-train-memory; nothing is
committed): 2448 x 2048 JPEGs of a textured surface (a brushed, slightly uneven metal: random
low-frequency shading, directional grain and sensor noise), each different. Every row is one
``python -m adcore train`` process run under ``/usr/bin/time -v``, so the peak RSS is the whole
process's (Python, torch, the model and the data), as an operating system sees it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (2448, 2048)  # width, height: a 5-MP industrial camera


def make_photo(path: Path, seed: int) -> None:
    """One textured normal photo: shading from a coarse random field, grain along one direction and noise."""
    rng = np.random.default_rng(seed)
    w, h = PHOTO_SIZE
    coarse = rng.normal(0, 1, (8, 10)).astype(np.float32)
    shading = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))
    grain_rows = rng.normal(0, 1, (h // 4, w // 64)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain_rows, mode="F").resize((w, h), Image.BILINEAR))
    base = 120 + 18 * shading + 10 * grain
    tint = np.array([1.0, 0.97, 0.92], np.float32) * rng.uniform(0.95, 1.05)
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    rgb = np.clip(base[..., None] * tint + noise, 0, 255).astype(np.uint8)
    Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(0.7)).save(path, quality=90)


def ensure_photos(folder: Path, count: int) -> Path:
    """A folder of ``count`` photos (the first ``count`` of the generated ones, linked)."""
    pool = folder / "all"
    pool.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        target = pool / f"{i:05d}.jpg"
        if not target.exists():
            make_photo(target, seed=i)
    subset = folder / f"n{count}"
    if not subset.exists():
        subset.mkdir()
        for i in range(count):
            os.symlink(pool / f"{i:05d}.jpg", subset / f"{i:05d}.jpg")
    return subset


def measure(data: Path, method: str, params: list[str], out_root: Path) -> dict:
    """Peak RSS (kB, as /usr/bin/time prints it), wall and CPU time (s) of one ``python -m adcore train`` process."""
    out = out_root / f"run-{data.name}-{method}"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "adcore", "train", "--data", str(data),
           "--method", method, "--out", str(out)]
    for p in params:
        cmd += ["--param", p]
    log = out_root / f"train-{data.name}-{method}.log"  # its progress, to follow with tail -f while it runs
    print(f"  {data.name}: {' '.join(cmd[2:])} (progress: {log})", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
    wall = time.monotonic() - t0
    proc.stderr = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    row = {"wall_s": wall, "cpu_s": cpu, "rss_kb": int(rss.group(1)) if rss else float("nan"),
           "rc": proc.returncode}
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if "\r" not in line][-15:]
        row["error"] = "\n".join(tail)
    shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--method", default="auto")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "adcore-train-memory")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        print("/usr/bin/time is needed (apt-get install time)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    sets = {n: ensure_photos(args.photos, n) for n in args.counts}
    print(f"{max(args.counts)} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} ready in {time.monotonic() - t0:.0f} s "
          f"under {args.photos}", flush=True)
    out_root = Path(tempfile.mkdtemp(prefix="adcore-train-memory-runs-"))
    # CPU time (user + system) is printed beside the wall time: it says what a row costs even where
    # other jobs shared the cores.
    # /usr/bin/time's kilobytes are KiB: both units, since "6 GB" is read either way.
    print("\n| photos | method | peak RSS (GiB) | peak RSS (GB) | wall (s) | CPU (s) |\n|---:|---|---:|---:|---:|---:|",
          flush=True)
    failed = 0
    for n, data in sets.items():
        row = measure(data, args.method, args.param, out_root)
        label = " ".join([args.method] + args.param)
        gib, gb = row["rss_kb"] / 1024**2, row["rss_kb"] * 1024 / 1e9
        print(f"| {n} | {label} | {gib:.2f} | {gb:.2f} | {row['wall_s']:.0f} | {row['cpu_s']:.0f} |", flush=True)
        if row["rc"]:
            failed += 1
            print(f"  (failed, exit {row['rc']}):\n{row['error']}", flush=True)
    shutil.rmtree(out_root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
