"""What an image set is: its usable images (``ImageRecord``), the files left out with their reason
(``SkippedFile``), the ``ImageSet`` with its summary, and which file names are never part of one."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


NORMAL_LABEL = "good"


@dataclass(frozen=True)
class ImageRecord:
    """One usable image of a set: where it is, what it is, and its size after EXIF orientation."""

    path: Path  # absolute path of the image on disk
    rel_path: str  # posix path relative to the image set's root, e.g. "test/crack/001.png"
    split: str  # "train" or "test"
    label: str  # "good" or the defect class name
    mask_path: Path | None  # ground-truth mask, if one was found and is readable
    width: int
    height: int

    @property
    def is_normal(self) -> bool:
        return self.label == NORMAL_LABEL


@dataclass(frozen=True)
class SkippedFile:
    """A file of the set that is not used, and the short human reason why."""

    rel_path: str
    reason: str


@dataclass
class ImageSet:
    """The usable images of a folder (records) and every file left out with its reason (skipped)."""

    root: Path
    layout: str  # "mvtec" or "plain"
    records: list[ImageRecord]
    skipped: list[SkippedFile]

    def select(self, split: str | None = None, normal: bool | None = None) -> list[ImageRecord]:
        return [
            r
            for r in self.records
            if (split is None or r.split == split) and (normal is None or r.is_normal == normal)
        ]

    @property
    def normal_train(self) -> list[ImageRecord]:
        return self.select(split="train", normal=True)

    @property
    def test(self) -> list[ImageRecord]:
        return self.select(split="test")

    @property
    def defect_classes(self) -> list[str]:
        return sorted({r.label for r in self.records if not r.is_normal})

    def summary(self) -> dict:
        """Counts per split and class, masks matched per test class, image size range, n skipped."""
        counts: dict[str, dict[str, int]] = {}
        for split in _ordered({r.split for r in self.records}, first="train"):
            labels = Counter(r.label for r in self.records if r.split == split)
            counts[split] = {label: labels[label] for label in _ordered(labels, first=NORMAL_LABEL)}
        masks = {}
        for label in _ordered({r.label for r in self.test}, first=NORMAL_LABEL):
            group = [r for r in self.test if r.label == label]
            matched = sum(r.mask_path is not None for r in group)
            if label != NORMAL_LABEL or matched:
                masks[label] = {"matched": matched, "images": len(group)}
        sizes = None
        if self.records:
            (common, n_common), = Counter((r.width, r.height) for r in self.records).most_common(1)
            sizes = {
                "min_width": min(r.width for r in self.records),
                "max_width": max(r.width for r in self.records),
                "min_height": min(r.height for r in self.records),
                "max_height": max(r.height for r in self.records),
                "most_common": common,
                "most_common_count": n_common,
                "n_distinct": len({(r.width, r.height) for r in self.records}),
            }
        return {
            "root": str(self.root),
            "layout": self.layout,
            "n_images": len(self.records),
            "n_skipped": len(self.skipped),
            "counts": counts,
            "masks": masks,
            "sizes": sizes,
        }

    def describe(self) -> str:
        """The human report printed by ``check``: counts, masks, sizes, then every skipped file."""
        s = self.summary()
        layout = {
            "mvtec": "MVTec AD (train/good, test/<class>, ground_truth/<class>)",
            "plain": "plain folder (every image is a normal training image)",
        }[self.layout]
        lines = [
            f"Image set: {self.root}",
            f"Layout:    {layout}",
            f"Usable images: {s['n_images']}   skipped files: {s['n_skipped']}",
            "",
        ]
        rows = [("split", "class", "images", "masks")]
        for split, labels in s["counts"].items():
            for label, n in labels.items():
                mask = s["masks"].get(label) if split == "test" else None
                rows.append((split, label, str(n), f"{mask['matched']}/{mask['images']}" if mask else "-"))
        if len(rows) == 1:
            lines.append("No usable images.")
        else:
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                lines.append(
                    f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
                    f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
                )
        if s["sizes"]:
            z = s["sizes"]
            w, h = z["most_common"]
            lines += [
                "",
                f"Image sizes: width {_span(z['min_width'], z['max_width'])} px, "
                f"height {_span(z['min_height'], z['max_height'])} px; "
                f"most common {w}x{h} ({z['most_common_count']} images, {z['n_distinct']} distinct sizes)",
            ]
        lines.append("")
        if self.skipped:
            lines.append(f"Skipped files ({len(self.skipped)}):")
            lines += [f"  {f.rel_path}: {f.reason}" for f in self.skipped]
        else:
            lines.append("Skipped files: none")
        return "\n".join(lines)


def _ordered(names: Iterable[str], first: str) -> list[str]:
    return sorted(names, key=lambda n: (n != first, n))


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def sorted_records(records: list[ImageRecord]) -> list[ImageRecord]:
    return sorted(records, key=lambda r: (r.split != "train", r.rel_path))


def sorted_skipped(skipped: list[SkippedFile]) -> list[SkippedFile]:
    return sorted(skipped, key=lambda s: s.rel_path)
