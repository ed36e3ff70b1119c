"""``check PATH``: decode every image of a folder or zip and report what is usable and what is not."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from adcore.data import open_image_set


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate an image set (folder or .zip) and list every skipped file",
        description=(
            "Decode every image of an image set (MVTec AD layout or a plain folder of normal "
            "images, as a folder or a .zip) and report counts per split and class, image sizes, "
            "matched masks and every skipped file with its reason. Exits 1 when there is no "
            "usable normal training image."
        ),
    )
    parser.add_argument("path", type=Path, help="folder or .zip file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="adcore-check-") as scratch:
        if args.path.is_file():
            print(f"Zip: {args.path} (extracted to a temporary folder, removed after the check)")
        image_set = open_image_set(args.path, extract_dir=Path(scratch) / "extracted")
        print(image_set.describe())
        n_normal = len(image_set.normal_train)  # read before the extracted zip is deleted
    if n_normal == 0:
        where = "in train/good" if image_set.layout == "mvtec" else "in the folder"
        print(f"error: no usable normal training image {where}", file=sys.stderr)
        return 1
    print(f"\nOK: {n_normal} normal training images")
    return 0
