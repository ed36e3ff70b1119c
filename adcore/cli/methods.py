"""``python -m adcore methods``: the method registry with every parameter."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list detection methods and their parameters")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adcore.methods import DEFAULT_METHOD, list_methods

    for cls in list_methods():
        default = "  (default)" if cls.name == DEFAULT_METHOD else ""
        print(f"{cls.name}{default}: {cls.title}")
        print(f"    {cls.summary}")
        for spec in cls.param_specs():
            print(f"    --param {spec.describe()}")
        augs = ", ".join(name for name, _ in cls.default_augmentations) or "none"
        print(f"    default augmentations: {augs}")
        print()
    return 0
