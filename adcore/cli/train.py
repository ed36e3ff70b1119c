"""``python -m adcore train``: train a method on the normal images of a folder or zip."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Callable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method and write a run folder")
    p.add_argument("--data", required=True, help="folder or zip (MVTec AD layout or plain folder of normal images)")
    p.add_argument("--method", default=None, help="method name (see `methods`); default: the default method")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter, repeatable")
    p.add_argument("--image-size", type=int, default=None, help="square image size in pixels")
    p.add_argument("--budget-s", type=float, default=None, help="stop training cleanly after this many seconds")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--out", required=True, help="run folder to create (must not exist)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: one Ray task, on a GPU where the cluster has one (Ray is an "
        "optional extra); Ctrl-C cancels it",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --engine ray: a running Ray cluster (the data on storage its nodes see); default: a local "
        "instance on this machine",
    )
    p.set_defaults(func=run)


def parse_params(cls, pairs: list[str]) -> dict:
    """``key=value`` strings -> typed values using the method's parameter specs."""
    specs = {p.name: p for p in cls.param_specs()}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param expects KEY=VALUE, got {pair!r}")
        if key not in specs:
            raise ValueError(f"{cls.name} has no parameter {key!r}; it has: {', '.join(specs)}")
        out[key] = specs[key].parse(value)
    return out


def bar_progress(bar: Any, label: str = "") -> Callable[[dict], None]:
    """A training ``on_progress`` that drives the tqdm ``bar``: reset at each new phase (named after
    ``label``, if given), the step as its position, the loss and epoch beside it."""
    shown = {"phase": None}

    def on_progress(event: dict) -> None:
        phase = event.get("phase", "")
        if shown["phase"] != phase:
            shown["phase"] = phase
            bar.reset(total=event.get("total_steps") or None)
            bar.set_description(f"{label}: {phase}" if label else phase, refresh=False)
            bar.set_postfix({}, refresh=False)
        bar.n = event.get("step", 0)
        if event.get("loss") is not None:
            bar.set_postfix(loss=f"{event['loss']:.4f}", epoch=event.get("epoch"), refresh=False)
        bar.refresh()

    return on_progress


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from adcore.methods import DEFAULT_METHOD, Cancelled, get_method_class
    from adcore.training import TrainSpec, train_run

    if args.engine != "ray" and args.ray_address:
        raise ValueError("--ray-address goes with --engine ray")
    if args.engine == "ray":
        from adcore.ray_engine import RayNotInstalled, import_ray

        try:
            import_ray()  # before any work
        except RayNotInstalled as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    name = args.method or DEFAULT_METHOD
    params = parse_params(get_method_class(name), args.param)
    if args.image_size is not None:
        params["image_size"] = args.image_size
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new folder")
    spec = TrainSpec(data=args.data, method=name, params=params, budget_s=args.budget_s, device=args.device)

    bar = tqdm(total=0, unit="step", file=sys.stderr, dynamic_ncols=True)
    on_progress = bar_progress(bar)

    # Written under a scratch root next to --out, then moved, so --out appears only when complete.
    scratch = out.parent / f".adcore-train-{out.name}"
    try:
        if args.engine == "ray":
            from adcore.ray_training import train_on_ray

            def submitted(engine: str) -> None:
                bar.write(f"training on {engine}", file=sys.stderr)

            try:
                run_dir = train_on_ray(spec, scratch, address=args.ray_address, on_progress=on_progress,
                                       on_submitted=submitted)
            except Cancelled as exc:
                bar.close()
                print(f"{exc}: the Ray task was stopped, nothing was written", file=sys.stderr)
                return 130
        else:
            run_dir = train_run(spec, scratch, on_progress=on_progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(out)
    finally:
        bar.close()
        shutil.rmtree(scratch, ignore_errors=True)

    from adcore.runs import load_run

    run_ = load_run(out)
    cfg = run_.config
    print(f"run written to {out}")
    print(f"  method {name} on {cfg['device']}, trained {cfg['train_seconds']} s on {cfg['data']['n_fit']} images")
    for key, value in cfg["metrics"].items():
        print(f"  {key}: {'n/a' if value is None else f'{value:.4f}'}")
    if cfg["skipped"]:
        print(f"  {len(cfg['skipped'])} file(s) skipped; see `python -m adcore check {args.data}`")
    return 0
