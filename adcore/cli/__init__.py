"""Command line: ``python -m adcore <command>``; each command lives in its own module here.

A command module defines ``register(subparsers)`` which adds its sub-parser and sets
``func`` (taking the parsed args, returning an exit status) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

# Order in --help; modules found but not listed come after, alphabetically.
_ORDER = ["check", "methods", "train", "score", "bench", "export", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adcore",
        description="Visual anomaly detection trained on normal part photos only.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Bad input from the user: one clear line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the input: a full disk, a read-only folder
        from adcore.files import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
