"""Decoding one image or mask file without trusting it: size limits, only the decoders the known
extensions need, EXIF orientation, 16-bit and palette images, alpha. Images come out HWC uint8 RGB."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL import (  # noqa: F401 - registers exactly the decoders _PIL_FORMATS names
    BmpImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from adcore.data.records import ImageRecord


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused as decompression bombs, never decoded


MIN_IMAGE_SIDE = 16  # smaller images are skipped ("too small")


# Only the decoders that IMAGE_EXTENSIONS need: a renamed EPS or PSD must not reach a rarely used
# (or, for EPS, external Ghostscript) decoder. "JPEG" also opens camera MPO files.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class ImageError(ValueError):
    """An image file that cannot be used; str() is the human reason."""


# ---------------------------------------------------------------------------------------------
# Single images


def load_image(path: Path | str) -> np.ndarray:
    """Decode one image file to HWC uint8 RGB with EXIF orientation applied.

    Every mode becomes RGB: alpha is composited on black (a transparent pixel is black), 16-bit
    images are scaled to 8 bit (65535 -> 255). Raises ImageError whose str() is the reason.
    """
    path = Path(path)
    img = _open_checked(path)
    try:
        # Decode everything now so a truncated or corrupt file fails here, not in training.
        # Pillow raises a zoo of exception types on malformed data (OSError, SyntaxError,
        # ValueError, struct.error, IndexError...), so any failure of the decoder is "corrupt".
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # broken EXIF says nothing reliable about orientation: leave as stored
            pass
        return _to_rgb(img)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too large to decode in the available memory") from None
    except Exception as exc:
        raise ImageError(f"truncated or corrupt: {exc}") from None
    finally:
        img.close()


def load_images(records: Iterable[ImageRecord]) -> list[np.ndarray]:
    """Decode each record's image to HWC uint8 RGB, in order (see ``load_image``)."""
    return [load_image(r.path) for r in records]


def load_mask(record: ImageRecord) -> np.ndarray | None:
    """The record's ground-truth mask as HxW bool (True = defect) at the image's size, or None.

    Raises ImageError if the mask can no longer be read or no longer matches the image's size.
    """
    if record.mask_path is None:
        return None
    mask = _mask_from_rgb(load_image(record.mask_path))
    if mask.shape != (record.height, record.width):
        h, w = mask.shape
        raise ImageError(f"mask size {w}x{h} differs from image {record.width}x{record.height}")
    return mask


def _open_checked(path: Path) -> Image.Image:
    """Open the header only, refusing anything too large (before decoding) or too small."""
    try:
        img = Image.open(path, formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global, changeable) limit fired inside open; the Warning arrives here
        # only when warnings are errors. Our stricter limit below applies in every case.
        raise ImageError(f"too large: {exc}") from None
    except OSError as exc:
        raise ImageError(f"unreadable: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ImageError(f"truncated or corrupt: {exc}") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageError(f"too large: {w}x{h} pixels (limit {MAX_IMAGE_PIXELS:,})")
    if min(w, h) < MIN_IMAGE_SIDE:
        img.close()
        raise ImageError(f"too small: {w}x{h} (minimum {MIN_IMAGE_SIDE} px)")
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """HWC uint8 RGB from any Pillow mode."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "I":
        # 32-bit integers: in practice 16-bit data; values outside 0..65535 are stretched.
        values = np.asarray(img, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return _gray_to_rgb(_stretch(values))
        return _gray_to_rgb(_scale_16bit(values))
    if mode == "F":
        # Floats: 0..1 is the usual convention; anything else is stretched to its own range.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if values.size and (values.min() < 0 or values.max() > 1):
            return _gray_to_rgb(_stretch(values))
        return _gray_to_rgb(np.rint(values * 255).astype(np.uint8))
    if "transparency" in img.info and mode in ("1", "L", "P", "RGB"):
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)  # composited on black
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _mask_from_rgb(rgb: np.ndarray) -> np.ndarray:
    # Masks are binary but often saved with JPEG-like noise, so >= 128 is a defect;
    # masks stored as 0/1 (max value 1) count any non-zero pixel.
    gray = rgb.max(axis=2)
    return gray > 0 if gray.max() <= 1 else gray >= 128
