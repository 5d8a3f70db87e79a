"""The one decode-and-resize function: training, evaluation, export checks and prediction all call it.

It needs only Pillow and NumPy, so a `.tflite` predicts without TensorFlow and sees exactly the pixels
the model was trained on. (The tutorial trains through `tf.image.resize` but predicts through
`keras.utils.load_img`, whose default interpolation is "nearest": a silent skew this module removes.)
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from petal.errors import ConfigError, ImageError

# Extensions petal indexes, with the format their content should have; the first five are the
# ones Keras's loader indexes.
FORMAT_OF_EXTENSION = {
    ".bmp": "BMP", ".gif": "GIF", ".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}
KERAS_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
IMAGE_EXTENSIONS = tuple(FORMAT_OF_EXTENSION)
PILLOW_FORMATS = {"BMP", "GIF", "JPEG", "MPO", "PNG", "WEBP", "TIFF"}

# Pillow's bilinear filter, which antialiases when it shrinks. Recorded in every run config and
# every exported model, and part of the decode-cache key: change it and every cache is rebuilt.
RESIZE_METHOD = "pillow-bilinear-antialias"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (~ 9459 x 9459)

ImageSource = str | os.PathLike | bytes | Image.Image


def check_pixel_limit(max_pixels: int) -> None:
    """Refuse a limit below one before any file is read: every image would be called too large."""
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1. Received: max_pixels={max_pixels}")


def decode_image(
    source: ImageSource,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` upright, as RGB, resized to `size` = (height, width); return uint8 (h, w, 3).

    Raises `ImageError` naming the file for anything that cannot be turned into that array.
    """
    height, width = size
    name = _name_of(source)
    try:
        img = open_rgb(source, draft_size=max(height, width), max_pixels=max_pixels)
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile bytes; name the file instead.
        raise ImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if array.shape != (height, width, 3):  # pragma: no cover - guards a Pillow contract
        raise ImageError(name, f"decoded to unexpected shape {array.shape}")
    return array


def open_rgb(
    source: ImageSource, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open `source` as an upright RGB image (EXIF orientation applied, transparency over white).

    `draft_size` lets the JPEG decoder scale down by a power of two while decoding (never below
    `draft_size` on either side), which makes big phone photos several times cheaper to load.
    """
    name = _name_of(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        data = _read_bytes(source, name)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise ImageError(name, "not an image: Pillow cannot identify the file's format", "not-an-image") from None
        except Exception as exc:
            raise ImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        if img.format not in PILLOW_FORMATS:
            raise ImageError(
                name, f"unsupported image format {img.format}; supported: JPEG, PNG, GIF, BMP, WebP, TIFF", "unsupported-format"
            )
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise ImageError(
            name, f"{img.width}x{img.height} = {pixels:,} pixels exceeds the limit of {max_pixels:,} (raise it with --max-pixels)",
            "too-large",
        )
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white, 16-bit is scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            values = values / 257.0  # 16-bit range (0..65535) onto 0..255
        gray = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _read_bytes(source: str | os.PathLike | bytes, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageError(name, f"cannot read file ({exc.strerror or exc})", "unreadable") from None
    if not data:
        raise ImageError(name, "empty file (0 bytes)", "empty")
    return data


def _name_of(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return "<bytes>"
