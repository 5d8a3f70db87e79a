"""The one decode-and-resize function: training, evaluation, export checks and prediction all call it.

It needs only Pillow and NumPy, so a `.tflite` predicts without TensorFlow and sees exactly the pixels
the model was trained on. (The tutorial trains through `tf.image.resize` but predicts through
`keras.utils.load_img`, whose default interpolation is "nearest": a silent skew this module removes.)
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image

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
# One batch of decoded float32 images: far past a CPU's useful batch (5,523 at 180 x 180), short of its memory.
MAX_BATCH_BYTES = 2 << 30
# Shrink by an integer factor first only while the result stays this many times the target size: Pillow's own
# guideline (`reducing_gap=3.0` in `Image.resize`), beyond which the two-step result is indistinguishable.
REDUCING_GAP = 3

ImageSource = str | os.PathLike | bytes | Image.Image


def largest_batch(size: tuple[int, int]) -> int:
    """The most images of `size` = (height, width) one batch may hold: MAX_BATCH_BYTES of float32 pixels."""
    height, width = size
    return max(1, MAX_BATCH_BYTES // (height * width * 3 * 4))


def check_pixel_limit(max_pixels: int) -> None:
    """Refuse, before any file is read, a limit below one (every image would be called too large) or above the
    most pixels Pillow opens at all (twice its MAX_IMAGE_PIXELS: a higher limit would never take effect)."""
    most = 2 * Image.MAX_IMAGE_PIXELS
    if not 1 <= max_pixels <= most:
        raise ConfigError(f"max_pixels must be from 1 to {most:,} (the most Pillow opens). Received: max_pixels={max_pixels:,}")


def decode_image(
    source: ImageSource,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` upright, as RGB, resized to `size` = (height, width); return uint8 (h, w, 3).

    Raises `ImageError` naming the file for anything that cannot be turned into that array.
    Peak memory per image: see `open_rgb`.
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

    `draft_size` is the side the caller will resize to: the JPEG decoder then scales down by a power
    of two while decoding (`Image.draft`), and any other image at least 2 x REDUCING_GAP times larger
    is shrunk by an integer factor (`Image.reduce`) before any conversion, never below
    REDUCING_GAP x `draft_size`. Peak memory is therefore the file's pixels in their own mode (1 byte
    per pixel for L and P, 2 for I;16, 3 for RGB, 4 for RGBA, CMYK, I and F) plus one converted copy
    for P, 1-bit, I;16 and RGBA/LA (premultiplied for `reduce`), and the decoder's read buffer: at most
    about 9 bytes x `max_pixels` (~800 MB at the default limit; measured: RGBA PNG 8.4, 16-bit grey PNG
    6.4, float TIFF 5.5 bytes per pixel), and a few MB for a JPEG of any size.

    Raises `ImageError` (with its `kind`) for anything that cannot be decoded.
    """
    name = _name_of(source)
    if isinstance(source, Image.Image):
        return load_rgb(source, name, draft_size=draft_size, max_pixels=max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(source))
    else:
        fp = open_regular(source, name)
    with fp:
        if not fp.seek(0, io.SEEK_END):
            raise ImageError(name, "empty file (0 bytes)", "empty")
        fp.seek(0)
        return load_rgb(identify(fp, name), name, draft_size=draft_size, max_pixels=max_pixels)


def open_regular(path: str | os.PathLike, name: str | None = None) -> BinaryIO:
    """Open `path` for binary reading if, after following links, it is a regular file.

    A FIFO would block the reader forever and a device such as /dev/zero never ends, so both are
    refused from `fstat` before a byte is read; O_NONBLOCK keeps the open itself from waiting for
    a FIFO's writer. Raises `ImageError` of kind "special-file" or "unreadable".
    """
    name = name or os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})", "unreadable") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = next((label for test, label in _SPECIAL_FILES if test(mode)), "not a regular file")
        raise ImageError(name, f"{what}, not a regular file: only regular files are read", "special-file")
    return os.fdopen(fd, "rb")


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
)


def identify(fp: BinaryIO, name: str) -> Image.Image:
    """The image in `fp`, identified from its header only (no pixel data is read yet)."""
    try:
        return Image.open(fp)
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not an image: Pillow cannot identify the file's format", "not-an-image") from None
    except Image.DecompressionBombError as exc:  # twice Pillow's MAX_IMAGE_PIXELS: it refuses to open it at all
        raise ImageError(name, "too many pixels for Pillow to open (" + str(exc).split(", could be")[0] + ")",
                         "too-large") from None
    except Exception as exc:
        raise ImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def load_rgb(
    img: Image.Image, name: str, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Check `img`'s header (format, pixel count, value range), then decode it as upright 8-bit RGB,
    shrunk toward `draft_size` as `open_rgb` describes. Raises `ImageError`."""
    if img.format is not None and img.format not in PILLOW_FORMATS:
        raise ImageError(
            name, f"unsupported image format {img.format}; supported: JPEG, PNG, GIF, BMP, WebP, TIFF", "unsupported-format"
        )
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise ImageError(
            name, f"{img.width}x{img.height} = {pixels:,} pixels exceeds the limit of {max_pixels:,} (raise it with --max-pixels)",
            "too-large",
        )
    value_range = _value_range(img, name)
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            img.load()
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        rgb = to_rgb(_shrink(img, draft_size), value_range)
        return rgb.transpose(TRANSPOSE_OF_ORIENTATION[orientation]) if orientation in TRANSPOSE_OF_ORIENTATION else rgb
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None


# EXIF orientation -> the transpose that turns the stored pixels upright (as Pillow's ImageOps.exif_transpose).
TRANSPOSE_OF_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _shrink(img: Image.Image, target: int | None) -> Image.Image:
    """`img` divided by the largest integer factor that keeps its shorter side >= REDUCING_GAP x
    `target` (Pillow's `reduce`, the first step of its own `reducing_gap` resize), so conversions
    and the final resize work on a small image. Palette and 1-bit pixels cannot be averaged, and
    `reduce` takes no 16-bit mode: those are converted first."""
    factor = min(img.size) // (REDUCING_GAP * target) if target else 1
    if factor < 2:
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def _value_range(img: Image.Image, name: str) -> tuple[float, float] | None:
    """The pixel values that map onto 0..255 for modes deeper than 8 bits (None for the others).

    I;16 (16-bit PNG and TIFF): 0..65535, the range the format declares. F (32-bit float TIFF): the
    file's SMinSampleValue/SMaxSampleValue tags, else 0..1. I (32-bit integer TIFF): its declared
    range (SMin/SMaxSampleValue, or MaxSampleValue); without one it is refused, as a guess at it
    would silently turn the image black or white.
    """
    if img.mode.startswith("I;16"):
        return (0.0, 65535.0)
    if img.mode not in ("I", "F"):
        return None
    tags = getattr(img, "tag_v2", {})
    low = _tag_number(tags, 340, min) if 340 in tags else _tag_number(tags, 280, min) if 280 in tags else 0.0
    high = _tag_number(tags, 341, max) if 341 in tags else _tag_number(tags, 281, max) if 281 in tags else None
    if high is None and img.mode == "F":
        high = 1.0
    if high is None:
        raise ImageError(
            name, "32-bit integer pixels without a declared range (TIFF SMaxSampleValue or MaxSampleValue): "
                  "save the image with 8 or 16 bits per sample", "unsupported-format",
        )
    if low is None or high is None or not low < high:
        raise ImageError(name, f"the file declares an empty range of pixel values ({low}..{high})", "corrupt")
    return (low, high)


def _tag_number(tags, tag: int, pick) -> float | None:
    try:
        values = tags[tag]
        value = float(pick(values) if isinstance(values, (tuple, list)) else values)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def to_rgb(img: Image.Image, value_range: tuple[float, float] | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white.

    Modes deeper than 8 bits (I;16, I, F) map `value_range` (default: 0..65535, or 0..1 for F)
    linearly onto 0..255, clipping what lies outside; NaN becomes 0.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        low, high = value_range or ((0.0, 1.0) if img.mode == "F" else (0.0, 65535.0))
        values = np.asarray(img, dtype=np.float32)  # exact for 16-bit values; half the memory of float64
        values = np.nan_to_num((values - low) / ((high - low) / 255.0), nan=0.0, posinf=255.0, neginf=0.0)
        gray = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _name_of(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return "<bytes>"
