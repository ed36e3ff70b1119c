"""Tests for adcore.data: every bad input is built here, in tmp_path."""

from __future__ import annotations

import functools
import io
import stat
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from adcore import data
from adcore.data import (
    ImageError,
    ImageSet,
    extract_zip,
    load_image,
    load_images,
    load_mask,
    open_image_set,
    save_uploads,
)

# ---------------------------------------------------------------------------------------------
# Builders


def _noise(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image(path: Path, array: np.ndarray | None = None, fmt: str | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise() if array is None else array).save(path, format=fmt, **save)
    return path


def write_mask(path: Path, h: int = 24, w: int = 32) -> Path:
    mask = np.zeros((h, w), np.uint8)
    mask[4:10, 5:15] = 255
    mask[12:14, 0:3] = 100  # anti-aliasing noise below 128 is not a defect
    return write_image(path, mask)


def png_bytes(array: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise() if array is None else array).save(buf, "PNG")
    return buf.getvalue()


def truncated(raw: bytes) -> bytes:
    return raw[: len(raw) * 2 // 3]


@functools.cache
def bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of width x height zeros, a few hundred kB."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_mvtec(root: Path) -> Path:
    """train/good 3, test/good 2, test/crack 2 (both masked), test/scratch 1 (masked)."""
    for i in range(3):
        write_image(root / f"train/good/{i:03d}.png", _noise(seed=i))
    for i in range(2):
        write_image(root / f"test/good/{i:03d}.png", _noise(seed=10 + i))
        write_image(root / f"test/crack/{i:03d}.png", _noise(seed=20 + i))
        write_mask(root / f"ground_truth/crack/{i:03d}_mask.png")
    write_image(root / "test/scratch/000.png", _noise(seed=30))
    write_mask(root / "ground_truth/scratch/000_mask.png")
    return root


def skipped_reasons(image_set: ImageSet) -> dict[str, str]:
    return {s.rel_path: s.reason for s in image_set.skipped}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members:
            zf.writestr(name, payload)
    return path


# ---------------------------------------------------------------------------------------------
# Colour modes: everything becomes HWC uint8 RGB with the right values


def _roundtrip(tmp_path: Path, img: Image.Image, name: str, **save) -> np.ndarray:
    path = tmp_path / name
    img.save(path, **save)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == (img.height, img.width)
    return out


def test_rgb_is_unchanged(tmp_path):
    array = _noise()
    assert np.array_equal(load_image(write_image(tmp_path / "a.png", array)), array)


def test_gray_l(tmp_path):
    out = _roundtrip(tmp_path, Image.new("L", (16, 16), 77), "l.png")
    assert (out == 77).all()


def test_bilevel_1(tmp_path):
    img = Image.new("1", (16, 16), 0)
    img.paste(1, (0, 0, 8, 16))
    out = _roundtrip(tmp_path, img, "one.png")
    assert (out[:, :8] == 255).all() and (out[:, 8:] == 0).all()


def test_gray_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], np.uint16).repeat(16, axis=0).repeat(4, axis=1)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = _roundtrip(tmp_path, img, "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really stored as 16 bit
    assert out[0, ::4, 0].tolist() == [0, 100, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_32bit_int_mode_i(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 65535]], np.int32).repeat(16, axis=0).repeat(4, axis=1)
    out = _roundtrip(tmp_path, Image.fromarray(values, "I"), "i.tif")
    assert out[0, ::4, 0].tolist() == [0, 100, 255, 255]


def test_mode_i_outside_16bit_range_is_stretched(tmp_path):
    values = np.array([[-1000, 0, 100_000, 100_000]], np.int32).repeat(16, axis=0).repeat(4, axis=1)
    out = _roundtrip(tmp_path, Image.fromarray(values, "I"), "i_wide.tif")
    assert out[0, 0, 0] == 0 and out[0, 8, 0] == 255


def test_float_mode_f(tmp_path):
    values = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32).repeat(16, axis=0).repeat(4, axis=1)
    out = _roundtrip(tmp_path, Image.fromarray(values, "F"), "f.tif")
    assert out[0, ::4, 0].tolist() == [0, 128, 255, 255]


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :8, 3] = 255
    rgba[:, 8:12, 3] = 128
    rgba[:, 12:, 3] = 0
    out = _roundtrip(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 9].tolist() == [100, 50, 25]
    assert out[0, 13].tolist() == [0, 0, 0]


def test_gray_with_alpha_la(tmp_path):
    la = np.zeros((16, 16, 2), np.uint8)
    la[..., 0] = 200
    la[:, :8, 1] = 255
    la[:, 8:, 1] = 128
    out = _roundtrip(tmp_path, Image.fromarray(la, "LA"), "la.png")
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 9].tolist() == [100, 100, 100]


def _palette_image() -> Image.Image:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.paste(1, (0, 0, 8, 16))
    img.paste(2, (8, 0, 16, 8))
    return img


def test_palette_p(tmp_path):
    out = _roundtrip(tmp_path, _palette_image(), "p.png")
    assert out[0, 0].tolist() == [0, 255, 0]
    assert out[0, 9].tolist() == [0, 0, 255]
    assert out[12, 12].tolist() == [255, 0, 0]


def test_palette_with_transparency(tmp_path):
    out = _roundtrip(tmp_path, _palette_image(), "pt.png", transparency=0)
    assert Image.open(tmp_path / "pt.png").info.get("transparency") == 0
    assert out[0, 0].tolist() == [0, 255, 0]
    assert out[12, 12].tolist() == [0, 0, 0]  # transparent red -> black


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    img.paste((255, 0, 0, 0), (0, 0, 8, 16))
    img.paste((0, 0, 0, 255), (8, 0, 16, 8))
    out = _roundtrip(tmp_path, img, "cmyk.tif")
    assert out[0, 0].tolist() == [0, 255, 255]
    assert out[0, 9].tolist() == [0, 0, 0]
    assert out[12, 12].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)  # landscape: red left half, blue right half
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = write_image(tmp_path / "set/rotated.jpg", array, quality=95, exif=exif)
    out = load_image(path)
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # the left half is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50
    (record,) = open_image_set(tmp_path / "set").records
    assert (record.width, record.height) == (20, 40)


def test_load_images_keeps_order(tmp_path):
    image_set = open_image_set(make_mvtec(tmp_path / "set"))
    arrays = load_images(image_set.normal_train)
    assert [a.shape for a in arrays] == [(24, 32, 3)] * 3
    assert np.array_equal(arrays[1], _noise(seed=1))


# ---------------------------------------------------------------------------------------------
# Bad single files: each has a reason, none crashes


def test_text_file_named_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello, I am not a picture")
    with pytest.raises(ImageError, match="^not an image$"):
        load_image(path)


def test_renamed_foreign_format_is_not_decoded(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(path, format="GIF")  # only PNG/JPEG/BMP/TIFF/WebP decoders
    with pytest.raises(ImageError, match="^not an image$"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(truncated(buf.getvalue()))
    assert Image.open(path).size == (128, 128)  # the header alone looks fine
    with pytest.raises(ImageError, match="^truncated or corrupt: "):
        load_image(path)


def test_too_small(tmp_path):
    path = write_image(tmp_path / "tiny.png", _noise(8, 8))
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == "too small: 8x8 (minimum 16 px)"


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decoding fail loudly, so a test proves a file was refused from its header."""

    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20_000, 20_000))  # 400 Mpixel; 1.2 GB once decoded as RGB
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="^too large: "):
        load_image(path)


def test_bomb_refused_even_without_pillows_global_limit(tmp_path, monkeypatch, no_decoding):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20_000, 20_000))
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == "too large: 20000x20000 pixels (limit 40,000,000)"


def test_own_limit_is_below_pillows(tmp_path, no_decoding):
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(7_000, 7_000))  # 49 Mpixel: under Pillow's limit, over ours
    assert 7_000 * 7_000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"^too large: 7000x7000 pixels"):
        load_image(path)


def test_small_bomb_header_decodes_when_within_limits(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(bomb_png(64, 40))  # the builder itself makes valid PNGs
    out = load_image(path)
    assert out.shape == (40, 64, 3) and (out == 0).all()


# ---------------------------------------------------------------------------------------------
# Layouts


def test_mvtec_layout_counts_and_masks(tmp_path):
    image_set = open_image_set(make_mvtec(tmp_path / "set"))
    assert image_set.layout == "mvtec"
    assert image_set.root == (tmp_path / "set").resolve()
    assert image_set.skipped == []
    assert [r.rel_path for r in image_set.normal_train] == [f"train/good/{i:03d}.png" for i in range(3)]
    assert len(image_set.test) == 5
    assert image_set.defect_classes == ["crack", "scratch"]
    assert len(image_set.select(split="test", normal=False)) == 3
    crack = image_set.select(split="test", normal=False)[0]
    assert crack.rel_path == "test/crack/000.png" and crack.label == "crack" and not crack.is_normal
    assert crack.path == (tmp_path / "set/test/crack/000.png").resolve()
    assert crack.mask_path == (tmp_path / "set/ground_truth/crack/000_mask.png").resolve()
    assert (crack.width, crack.height) == (32, 24)

    mask = load_mask(crack)
    assert mask.dtype == bool and mask.shape == (24, 32)
    assert mask[4:10, 5:15].all() and mask.sum() == 6 * 10  # the 100-valued noise is not a defect
    assert load_mask(image_set.normal_train[0]) is None

    s = image_set.summary()
    assert s["counts"] == {"train": {"good": 3}, "test": {"good": 2, "crack": 2, "scratch": 1}}
    assert s["masks"] == {"crack": {"matched": 2, "images": 2}, "scratch": {"matched": 1, "images": 1}}
    assert s["sizes"]["most_common"] == (32, 24) and s["n_skipped"] == 0


def test_mask_stored_as_zero_one(tmp_path):
    root = make_mvtec(tmp_path / "set")
    ones = np.zeros((24, 32), np.uint8)
    ones[0:3, 0:2] = 1
    write_image(root / "ground_truth/crack/000_mask.png", ones)
    crack = open_image_set(root).select(split="test", normal=False)[0]
    assert load_mask(crack).sum() == 6


def test_mvtec_bad_files_are_listed_with_reasons(tmp_path):
    root = make_mvtec(tmp_path / "set")
    (root / "test/crack/002.png").write_text("not a png")
    write_mask(root / "ground_truth/crack/002_mask.png")
    write_image(root / "test/scratch/001.png")
    (root / "ground_truth/scratch/001_mask.png").write_bytes(b"\x89PNG garbage")
    write_image(root / "test/scratch/002.png")
    write_mask(root / "ground_truth/scratch/002_mask.png", h=30, w=40)
    write_mask(root / "ground_truth/crack/099_mask.png")
    write_image(root / "train/good/tiny.png", _noise(8, 8))
    (root / "train/good/cut.jpg").write_bytes(truncated((root / "train/good/000.png").read_bytes()))
    (root / "notes.txt").write_text("hello")  # documentation beside the splits: ignored
    write_image(root / "stray.png")  # an image outside the splits: reported
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX/._000.png").write_bytes(b"resource fork")
    (root / "train/good/.hidden.png").write_text("x")

    image_set = open_image_set(root)
    reasons = skipped_reasons(image_set)
    assert reasons == {
        "test/crack/002.png": "not an image",
        "ground_truth/crack/002_mask.png": "mask of a skipped image",
        "ground_truth/scratch/001_mask.png": "unreadable mask: not an image",
        "ground_truth/scratch/002_mask.png": "mask size 40x30 differs from image 32x24",
        "ground_truth/crack/099_mask.png": "mask without a matching test image",
        "train/good/tiny.png": "too small: 8x8 (minimum 16 px)",
        "train/good/cut.jpg": reasons["train/good/cut.jpg"],
        "stray.png": "outside train/, test/ and ground_truth/",
    }
    assert reasons["train/good/cut.jpg"].startswith("truncated or corrupt: ")
    assert [s.rel_path for s in image_set.skipped] == sorted(reasons)
    # The images whose masks were bad are kept, without a mask.
    by_path = {r.rel_path: r for r in image_set.records}
    assert by_path["test/scratch/001.png"].mask_path is None
    assert by_path["test/scratch/002.png"].mask_path is None
    assert len(image_set.normal_train) == 3

    report = image_set.describe()
    for rel, reason in reasons.items():
        assert f"{rel}: {reason}" in report
    assert "1/3" in report  # scratch: one of three images has a usable mask


def test_single_subfolder_mvtec(tmp_path):
    make_mvtec(tmp_path / "outer/bottle")
    (tmp_path / "outer/readme.txt").write_text("from the zip")
    image_set = open_image_set(tmp_path / "outer")
    assert image_set.layout == "mvtec"
    assert image_set.root == (tmp_path / "outer/bottle").resolve()
    assert len(image_set.normal_train) == 3 and len(image_set.test) == 5
    assert skipped_reasons(image_set) == {"../readme.txt": "outside the image set folder bottle/"}


def test_several_mvtec_categories_are_refused(tmp_path):
    make_mvtec(tmp_path / "all/bottle")
    make_mvtec(tmp_path / "all/cable")
    with pytest.raises(ValueError, match="bottle, cable"):
        open_image_set(tmp_path / "all")


def test_plain_folder_is_all_normal_training(tmp_path):
    root = tmp_path / "photos"
    write_image(root / "b.png", _noise(seed=1))
    write_image(root / "a.jpg", _noise(seed=2))
    write_image(root / "sub/deeper/c.bmp", _noise(seed=3))
    (root / "list.csv").write_text("a,b")
    (root / ".DS_Store").write_bytes(b"junk")
    image_set = open_image_set(root)
    assert image_set.layout == "plain"
    assert [r.rel_path for r in image_set.records] == ["a.jpg", "b.png", "sub/deeper/c.bmp"]
    assert all(r.split == "train" and r.is_normal and r.mask_path is None for r in image_set.records)
    assert image_set.normal_train == image_set.records and image_set.test == []
    assert skipped_reasons(image_set) == {"list.csv": "not an image"}


def test_open_missing_or_wrong_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_image_set(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        open_image_set(tmp_path / "file.txt")


# ---------------------------------------------------------------------------------------------
# Zips


def test_zip_unsafe_members_are_skipped_and_nothing_escapes(tmp_path):
    evil_abs = f"/tmp/adcore-evil-{uuid.uuid4().hex}"
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(
        tmp_path / "in.zip",
        [
            ("train/good/000.png", png_bytes()),
            ("../evil.txt", b"escape"),
            ("a/../../evil2.txt", b"escape"),
            (evil_abs, b"escape"),
            ("C:/evil3.txt", b"escape"),
            ("..\\evil4.txt", b"escape"),
            (link, b"/etc/passwd"),
            ("inner.zip", _zip(tmp_path / "inner.zip", [("x.png", png_bytes())]).read_bytes()),
            ("__MACOSX/._000.png", b"fork"),
        ],
    )
    (tmp_path / "inner.zip").unlink()
    names = [i.filename for i in zipfile.ZipFile(archive).infolist()]
    assert "../evil.txt" in names and evil_abs in names  # the zip really holds these names

    dest = tmp_path / "out"
    skipped = {s.rel_path: s.reason for s in extract_zip(archive, dest)}
    assert skipped == {
        "../evil.txt": "unsafe path in zip",
        "a/../../evil2.txt": "unsafe path in zip",
        evil_abs: "unsafe path in zip",
        "C:/evil3.txt": "unsafe path in zip",
        "..\\evil4.txt": "unsafe path in zip",
        "link.png": "symlink in zip",
        "inner.zip": "nested zip not extracted",
    }
    assert files_under(dest) == {"train/good/000.png"}
    assert files_under(tmp_path) == {"in.zip", "out/train/good/000.png"}
    assert not Path(evil_abs).exists()
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_bomb_by_declared_size_is_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", [("train/good/zeros.png", b"\0" * 200_000)])
    assert archive.stat().st_size < 2_000
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^zip refused: uncompressed size 200,000 bytes exceeds"):
        extract_zip(archive, dest, max_total_bytes=100_000)
    assert not dest.exists() or files_under(dest) == set()


def test_zip_bomb_by_file_count_is_refused(tmp_path):
    archive = _zip(tmp_path / "many.zip", [(f"f{i}.png", b"x") for i in range(30)])
    with pytest.raises(ValueError, match=r"^zip refused: 30 files exceeds the limit of 20"):
        extract_zip(archive, tmp_path / "out", max_files=20)
    assert files_under(tmp_path) == {"many.zip"}


def test_zip_whose_data_outgrows_its_headers_is_refused(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "liar.zip", [("a.png", b"x" * 10), ("b.png", b"y" * 10)])
    real_open = zipfile.ZipFile.open

    def lying_open(self, member, *args, **kwargs):
        if getattr(member, "filename", member) == "b.png":
            return io.BytesIO(b"y" * 5_000)  # far more than the 10 bytes its header declares
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    dest = tmp_path / "out"
    with pytest.raises(ValueError, match="^zip refused: uncompressed data exceeds the limit of 1,000"):
        extract_zip(archive, dest, max_total_bytes=1_000)
    assert files_under(dest) == set()  # a.png, written before the lie showed, is removed too


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 but nothing else")
    with pytest.raises(ValueError, match="^zip refused: "):
        extract_zip(tmp_path / "x.zip", tmp_path / "out")


def test_open_image_set_from_zip_with_single_subfolder(tmp_path):
    members = [
        ("bottle/train/good/000.png", png_bytes(_noise(seed=1))),
        ("bottle/train/good/001.png", png_bytes(_noise(seed=2))),
        ("bottle/test/crack/000.png", png_bytes(_noise(seed=3))),
        ("bottle/ground_truth/crack/000_mask.png", png_bytes(np.full((24, 32), 255, np.uint8))),
        ("bottle/test/crack/001.png", truncated(png_bytes(_noise(64, 64)))),
        ("bottle/../../evil.txt", b"escape"),
    ]
    archive = _zip(tmp_path / "bottle.zip", members)
    image_set = open_image_set(archive, extract_dir=tmp_path / "x")
    assert image_set.layout == "mvtec" and image_set.root == (tmp_path / "x/bottle").resolve()
    assert len(image_set.normal_train) == 2
    (crack,) = image_set.select(split="test")
    assert load_mask(crack).all()
    reasons = skipped_reasons(image_set)
    assert reasons["bottle/../../evil.txt"] == "unsafe path in zip"
    assert reasons["test/crack/001.png"].startswith("truncated or corrupt")
    assert not (tmp_path.parent / "evil.txt").exists()


# ---------------------------------------------------------------------------------------------
# Uploads


def test_save_uploads_mix_of_good_corrupt_and_zip(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("more/z1.png", png_bytes(_noise(seed=5)))
        zf.writestr("../escape.png", png_bytes())
    uploads = [
        ("a.png", png_bytes(_noise(seed=1))),
        ("a.png", png_bytes(_noise(seed=2))),  # same name twice: both kept
        ("broken.png", truncated(png_bytes(_noise(64, 64)))),
        ("../../outside.png", png_bytes(_noise(seed=3))),
        ("C:\\Users\\me\\photo.jpg", png_bytes(_noise(seed=4))),
        ("C:\\Users\\me\\.DS_Store", b"junk"),
        ("bad\x00name|.png/x.png", png_bytes(_noise(seed=6))),
        ("notes.txt", b"hello"),
        ("extra.zip", inner.getvalue()),
        ("broken.zip", b"PK\x03\x04 and then nothing a zip needs"),
    ]
    dest = tmp_path / "uploads"
    image_set = save_uploads(uploads, dest)
    assert image_set.layout == "plain"
    assert sorted(r.rel_path for r in image_set.records) == [
        "Users/me/photo.jpg",
        "a.png",
        "a_1.png",
        "bad_name_.png/x.png",
        "more/z1.png",
        "outside.png",
    ]
    reasons = skipped_reasons(image_set)
    assert reasons["broken.png"].startswith("truncated or corrupt")
    assert reasons["notes.txt"] == "not an image"
    assert reasons["extra.zip/../escape.png"] == "unsafe path in zip"
    assert reasons["broken.zip"].startswith("zip refused: ")
    assert reasons["Users/me/.DS_Store"] == "hidden file ignored"
    assert set(reasons) == {
        "broken.png",
        "notes.txt",
        "extra.zip/../escape.png",
        "broken.zip",
        "Users/me/.DS_Store",
    }
    assert {p.split("/")[0] for p in files_under(tmp_path)} == {"uploads"}
    assert not (dest / "Users/me/.DS_Store").exists()
    assert np.array_equal(load_image(dest / "a_1.png"), _noise(seed=2))


def test_save_uploads_refused_zip_bomb_is_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(data.uploads, "extract_zip", functools.partial(extract_zip, max_files=5))
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(10):
            zf.writestr(f"{i}.png", png_bytes())
    image_set = save_uploads([("ok.png", png_bytes()), ("many.zip", many.getvalue())], tmp_path / "up")
    assert [r.rel_path for r in image_set.records] == ["ok.png"]
    assert skipped_reasons(image_set)["many.zip"] == "zip refused: 10 files exceeds the limit of 5"
    assert files_under(tmp_path / "up") == {"ok.png"}


def test_folder_link_loop_terminates(tmp_path):
    write_image(tmp_path / "set/a.png")
    (tmp_path / "set/loop").symlink_to(tmp_path / "set", target_is_directory=True)
    image_set = open_image_set(tmp_path / "set")
    assert image_set.layout == "plain"
    assert [r.rel_path for r in image_set.records][0] == "a.png"
