"""Tests for ``python -m adcore check``: exit codes and the report of usable and skipped files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore.cli import main

MAGNETIC_TILE = Path(__file__).resolve().parents[2] / "shared/data/magnetic_tile"


def _png(path: Path, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_check_passes_with_a_normal_image_and_lists_skipped(tmp_path, capsys):
    _png(tmp_path / "set/good.png")
    (tmp_path / "set/fake.png").write_text("not a picture")
    _png(tmp_path / "set/tiny.png", 8, 8)
    raw = _png(tmp_path / "big.png", 128, 128).read_bytes()
    (tmp_path / "set/cut.png").write_bytes(raw[: len(raw) // 2])

    assert main(["check", str(tmp_path / "set")]) == 0
    out = capsys.readouterr().out
    assert "train  good  " in out and "OK: 1 normal training images" in out
    assert "Skipped files (3):" in out
    assert "fake.png: not an image" in out
    assert "tiny.png: too small: 8x8 (minimum 16 px)" in out
    assert "cut.png: truncated or corrupt: " in out


def test_check_fails_without_a_normal_training_image(tmp_path, capsys):
    (tmp_path / "set").mkdir()
    (tmp_path / "set/fake.png").write_text("not a picture")
    assert main(["check", str(tmp_path / "set")]) == 1
    captured = capsys.readouterr()
    assert "fake.png: not an image" in captured.out
    assert captured.err.strip() == "error: no usable normal training image in the folder"


def test_check_fails_on_mvtec_with_test_images_only(tmp_path, capsys):
    _png(tmp_path / "set/test/crack/000.png")
    assert main(["check", str(tmp_path / "set")]) == 1
    captured = capsys.readouterr()
    assert "test   crack" in captured.out
    assert "train/good" in captured.err


def test_check_reads_a_zip(tmp_path, capsys):
    buf = io.BytesIO()
    Image.new("L", (20, 20), 9).save(buf, "PNG")
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        zf.writestr("part/train/good/000.png", buf.getvalue())
        zf.writestr("part/../../evil.txt", b"escape")
    assert main(["check", str(tmp_path / "set.zip")]) == 0
    out = capsys.readouterr().out
    assert "part/../../evil.txt: unsafe path in zip" in out
    assert not (tmp_path.parent / "evil.txt").exists()


def test_check_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_check_magnetic_tile(capsys):
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"{MAGNETIC_TILE} is absent")
    assert main(["check", str(MAGNETIC_TILE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:3]) for line in lines}
    for split, label, n in [
        ("train", "good", 700),
        ("test", "good", 252),
        ("test", "blowhole", 115),
        ("test", "break", 85),
        ("test", "crack", 57),
        ("test", "fray", 32),
        ("test", "uneven", 103),
    ]:
        assert (split, label, str(n)) in rows
    for label, n in [("blowhole", 115), ("break", 85), ("crack", 57), ("fray", 32), ("uneven", 103)]:
        assert any(line.split()[1:] == [label, str(n), f"{n}/{n}"] for line in lines)
    assert "Skipped files: none" in lines
