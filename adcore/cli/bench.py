"""``python -m adcore bench``: train methods on a data set's normal images, score its test split,
compare accuracy, speed and memory (and scoring speed against a bare ResNet-18 on the same machine).

Each method is fitted with ``method.fit`` on all of ``train/good`` (no hold-out: a benchmark needs
no threshold) and scored on ``test/``. Embedding scorers are fitted on the training images'
embeddings, which costs one more pass over them; ``--scorers own`` skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from adcore.files import write_atomic

OWN_SCORER = "own"  # the method's own image score
DEFAULT_EMBEDDING_SCORERS = ("gaussian", "knn")
REFERENCE_MIN_S = 2.0  # time the ResNet-18 reference for at least this long


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark methods (and embedding scorers) on an MVTec-layout set",
        description="Fit each method on all of train/good (no hold-out) and measure it on test/: image "
        "AUROC, AUPR, best F1, pixel AUROC, fit time, scoring speed (also relative to a bare ResNet-18 "
        "here), peak memory.",
    )
    p.add_argument("--data", required=True, help="folder or zip in MVTec AD layout (train/good, test/<class>)")
    p.add_argument("--methods", required=True, help="comma-separated method names (see `methods`)")
    p.add_argument(
        "--scorers",
        default=None,
        help=f"comma-separated: '{OWN_SCORER}' (the method's score) and/or embedding scorers "
        f"(default: {OWN_SCORER},{','.join(DEFAULT_EMBEDDING_SCORERS)} where the method gives embeddings)",
    )
    p.add_argument("--image-size", type=int, default=None, help="square image size for every method")
    p.add_argument("--budget-s", type=float, default=None, help="stop each method's fitting after this long")
    p.add_argument(
        "--param", action="append", default=[], metavar="METHOD.KEY=VALUE", help="method parameter, repeatable"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per scoring batch")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 can be faster on a busy machine)"
    )
    p.add_argument("--out", required=True, help="JSON file to write (a list, one object per method and scorer)")
    p.set_defaults(func=run)


def parse_method_params(methods: list[str], pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``method.key=value`` strings -> {method: {key: typed value}} using each method's specs."""
    from adcore.cli.train import parse_params
    from adcore.methods import get_method_class

    raw: dict[str, list[str]] = {m: [] for m in methods}
    for pair in pairs:
        name, dot, rest = pair.partition(".")
        if not dot or "=" not in rest:
            raise ValueError(f"--param expects METHOD.KEY=VALUE, got {pair!r}")
        if name not in raw:
            raise ValueError(f"--param {pair!r} names method {name!r}, which is not in --methods")
        raw[name].append(rest)
    return {m: parse_params(get_method_class(m), pairs) for m, pairs in raw.items()}


def run(args: argparse.Namespace) -> int:
    from adcore.methods import get_method_class
    from adcore.scoring import SCORERS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods names no method")
    for name in methods:
        get_method_class(name)  # unknown names fail before any work
    params = parse_method_params(methods, args.param)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    scorers = None
    if args.scorers is not None:
        scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
        for s in scorers:
            if s != OWN_SCORER:
                SCORERS.get(s)
    out = Path(args.out)

    def record(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
        # After every method: a crash or Ctrl-C later keeps what was measured. Printed first, so a
        # full disk still shows the numbers before it stops the run.
        print(format_table(new), flush=True)
        write_atomic(out, json.dumps(rows, indent=2).encode("utf-8"))

    rows = bench(
        args.data,
        methods,
        params=params,
        scorers=scorers,
        image_size=args.image_size,
        budget_s=args.budget_s,
        batch_size=args.batch_size,
        device=args.device,
        on_method=record,
    )
    print()
    print(format_table(rows))
    print(f"results -> {out}")
    failed = [r["method"] for r in rows if r.get("error")]
    if failed:
        print(f"error: {len(failed)} of {len(methods)} method(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


@dataclass
class BenchData:
    """The images every method is measured on: HWC uint8 train (normal) and test images, which
    test images are anomalous, and a mask per test image (all False for normal ones)."""

    train_images: list[np.ndarray]
    test_images: list[np.ndarray]
    is_anomaly: np.ndarray
    masks: list[np.ndarray]


def bench(
    data: str,
    methods: list[str],
    *,
    params: dict[str, dict[str, Any]] | None = None,
    scorers: list[str] | None = None,
    image_size: int | None = None,
    budget_s: float | None = None,
    batch_size: int = 32,
    device: str = "auto",
    on_method: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Fit and score each method on ``data``; one result dict per method and scorer.

    A method that fails gets one row with its ``error`` and the others still run. After each method
    ``on_method(rows so far, its rows)`` is called, e.g. to save and print them.
    """
    from adcore.data import load_image, load_mask, open_image_set
    from adcore.device import pick_device

    torch_device = pick_device(device)
    image_set = open_image_set(data)
    if not image_set.normal_train:
        raise ValueError(f"{data}: no normal training images (train/good)")
    if not image_set.test:
        raise ValueError(f"{data}: no test images (test/<class>) to measure on")
    test_records = image_set.test
    images = BenchData(
        train_images=[load_image(r.path) for r in image_set.normal_train],
        test_images=[load_image(r.path) for r in test_records],
        is_anomaly=np.array([not r.is_normal for r in test_records]),
        masks=[np.zeros((r.height, r.width), bool) if r.is_normal else load_mask(r) for r in test_records],
    )
    reference: dict[int, float] = {}

    rows: list[dict[str, Any]] = []
    for name in methods:
        method_params = dict((params or {}).get(name, {}))
        if image_size is not None:
            method_params["image_size"] = image_size
        try:
            new = measure_method(name, method_params, images, scorers, budget_s, batch_size, torch_device, reference)
        except Exception as exc:  # noqa: BLE001 - one method's failure must not cost the others' results
            new = [failed_row(name, method_params, exc, torch_device)]
            print(f"error: {name} failed: {new[0]['error']}", file=sys.stderr)
            _free_memory(torch_device)
        rows += new
        if on_method is not None:
            on_method(rows, new)
    return rows


def measure_method(
    name: str,
    method_params: dict[str, Any],
    data: BenchData,
    scorers: list[str] | None,
    budget_s: float | None,
    batch_size: int,
    torch_device,
    reference: dict[int, float],
) -> list[dict[str, Any]]:
    """Fit one method on the training images, score the test images; one row per scorer.
    ``reference`` caches the bare ResNet-18's images/s per image size."""
    from tqdm import tqdm

    from adcore.cli.train import bar_progress
    from adcore.device import describe_device
    from adcore.methods import FitContext, build_method
    from adcore.scoring import build_scorer

    train_images, test_images = data.train_images, data.test_images
    method = build_method(name, **method_params)
    config = method.get_params()
    size = config["image_size"]
    _reset_peak_memory(torch_device)

    bar = tqdm(total=0, desc=name, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
    ctx = FitContext(device=torch_device, budget_s=budget_s, on_progress=bar_progress(bar, name))
    try:
        t0 = time.monotonic()
        method.fit(train_images, ctx)
        train_seconds = time.monotonic() - t0

        bar.reset(total=len(test_images))
        bar.set_description(f"{name}: scoring test", refresh=True)
        t0 = time.monotonic()
        parts = []
        for start in range(0, len(test_images), batch_size):
            parts.append(method.predict(test_images[start : start + batch_size], batch_size=batch_size))
            bar.update(len(parts[-1].scores))
        score_seconds = time.monotonic() - t0
    finally:
        bar.close()
    scores = np.concatenate([p.scores for p in parts])
    embeddings = None if parts[0].embeddings is None else np.concatenate([p.embeddings for p in parts])
    maps = None if parts[0].anomaly_maps is None else [m for p in parts for m in p.anomaly_maps]

    wanted = scorers or [OWN_SCORER, *(DEFAULT_EMBEDDING_SCORERS if embeddings is not None else ())]
    embedding_scorers = [s for s in wanted if s != OWN_SCORER]
    if embedding_scorers and embeddings is None:
        print(f"note: {name} gives no embeddings; skipping scorers {', '.join(embedding_scorers)}", file=sys.stderr)
        embedding_scorers = []
    train_embeddings = None
    if embedding_scorers:
        train_embeddings = np.concatenate(
            [
                method.predict(train_images[s : s + batch_size], batch_size=batch_size).embeddings
                for s in tqdm(
                    range(0, len(train_images), batch_size),
                    desc=f"{name}: embedding train",
                    file=sys.stderr,
                    leave=False,
                )
            ]
        )
    peak_mb = _peak_memory_mb(torch_device)
    size = method.config_.get("image_size") or size  # as fitted: auto's 0 means "from the photos"
    if size not in reference:
        reference[size] = resnet18_images_per_second(size, batch_size, torch_device)

    common = {
        "method": name,
        "device": describe_device(torch_device),
        "image_size": size,
        "params": config,
        "n_train": len(train_images),
        "n_test": len(test_images),
        "peak_memory_mb": round(peak_mb, 1),
        "resnet18_images_per_second": round(reference[size], 2),
        **method.run_details(),  # e.g. auto's selection table
    }
    rows = []
    for scorer in wanted:
        if scorer == OWN_SCORER:
            row_scores, seconds, row_maps = scores, score_seconds, maps
            extra_fit = 0.0
        elif scorer in embedding_scorers:
            t0 = time.monotonic()
            fitted = build_scorer(scorer).fit(train_embeddings)
            extra_fit = time.monotonic() - t0
            t0 = time.monotonic()
            row_scores = fitted.score(embeddings)
            seconds, row_maps = score_seconds + time.monotonic() - t0, None
        else:
            continue
        ips = len(test_images) / max(seconds, 1e-9)
        rows.append(
            {
                **common,
                "scorer": scorer,
                **score_metrics(row_scores, row_maps, data),
                "train_seconds": round(train_seconds + extra_fit, 2),
                "images_per_second": round(ips, 2),
                "resnet18_ratio": round(ips / reference[size], 4),
            }
        )
    return rows


def score_metrics(scores: np.ndarray, maps: list[np.ndarray] | None, data: BenchData) -> dict[str, float | None]:
    """The accuracy figures of one way of scoring the test images: image metrics from ``scores``,
    pixel metrics from the anomaly ``maps`` (HxW float per test image; None: the scorer has none)."""
    from adcore.scoring import hit_rate, image_metrics, pixel_auroc, pixel_pro

    return {
        **image_metrics(scores, data.is_anomaly),
        "pixel_auroc": pixel_auroc(maps, data.masks) if maps is not None else None,
        "pixel_pro": pixel_pro(maps, data.masks) if maps is not None else None,
        "hit_rate": hit_rate(maps, data.masks) if maps is not None else None,
    }


def failed_row(name: str, method_params: dict[str, Any], exc: BaseException, torch_device) -> dict[str, Any]:
    """The row of a method that failed: what it was asked to do and the message, no figures."""
    from adcore.device import describe_device
    from adcore.jobs import describe_error

    return {
        "method": name,
        "scorer": None,
        "device": describe_device(torch_device),
        "params": method_params,
        "error": describe_error(exc),
    }


def _free_memory(device) -> None:
    """After a failed method (often: out of memory), give its memory back before the next one."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def resnet18_images_per_second(image_size: int, batch_size: int, device) -> float:
    """Forward passes per second of a bare torchvision ResNet-18 (random weights) on this machine:
    the yardstick for "how heavy is this method" that does not depend on the machine."""
    import torch
    from torchvision.models import resnet18

    net = resnet18(weights=None).eval().to(device)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    with torch.inference_mode():
        net(x)  # warm-up: allocator, kernels
        _sync(device)
        n, t0 = 0, time.monotonic()
        while n == 0 or time.monotonic() - t0 < REFERENCE_MIN_S:
            net(x)
            n += batch_size
        _sync(device)
    return n / (time.monotonic() - t0)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass  # elsewhere the peak is the whole process's so far (ru_maxrss)


def _peak_memory_mb(device) -> float:
    """GPU: peak bytes allocated by torch. CPU: peak resident memory of this process since the
    last reset (includes the loaded images and Python itself)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table; a failed method's row gives its message instead."""
    header = ("method", "scorer", "img AUROC", "img AUPR", "F1 max", "pix AUROC", "PRO 30%", "hit rate", "train s",
              "img/s", "x RN18", "peak MB")

    def fmt(value: Any, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    measured = [r for r in rows if not r.get("error")]
    lines = [
        (
            r["method"],
            r["scorer"],
            fmt(r["image_auroc"]),
            fmt(r["image_aupr"]),
            fmt(r["image_f1_max"]),
            fmt(r["pixel_auroc"]),
            fmt(r.get("pixel_pro")),
            fmt(r.get("hit_rate"), 3),
            fmt(r["train_seconds"], 1),
            fmt(r["images_per_second"], 1),
            fmt(r["resnet18_ratio"], 3),
            fmt(r["peak_memory_mb"], 0),
        )
        for r in measured
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *lines]]
    out.insert(1, "-+-".join("-" * w for w in widths))
    out += [f"{r['method'].ljust(widths[0])} | FAILED: {r['error']}" for r in rows if r.get("error")]
    if rows:
        out.append(f"device: {rows[0]['device']}; x RN18 = scoring images/s / bare ResNet-18 forward images/s")
    return "\n".join(out)
