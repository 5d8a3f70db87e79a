"""Labels and preprocessing inside a `.tflite` file, written and read without TensorFlow.

The entry is a named item of the flatbuffer's standard `metadata` list (the list where the converter
itself records `min_runtime_version`), holding UTF-8 JSON. Any LiteRT/TFLite interpreter still loads
the file unchanged; `read_metadata` (or any flatbuffer reader of the TFLite schema) gets it back.
It is not the `TFLITE_METADATA` table of tflite-support, which cannot be installed beside TF 2.21.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from petal.data.decode import DEFAULT_MAX_PIXELS, RESIZE_METHOD
from petal.errors import ModelFileError

METADATA_NAME = "petal"
MAX_METADATA_ENTRIES = 1024  # the converter writes a handful; a damaged count must not loop for minutes
MAX_IMAGE_SIDE = 8192  # largest input side taken from a file: one 8192 x 8192 x 3 float32 input is 805 MB
MAX_PIXELS_BOUND = 1 << 31  # largest pixel limit taken from a file (Pillow's own images stop near there)


def embed_metadata(model_bytes: bytes, payload: dict) -> bytes:
    """Return `model_bytes` with `payload` stored as the metadata entry 'petal' (replacing an old one)."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _decode_name(m.name) != METADATA_NAME]
    model.metadata = kept + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(source: str | os.PathLike | bytes, name: str | None = None) -> dict | None:
    """The 'petal' metadata of a `.tflite` file or its bytes; None if the file has none.

    Raises `ModelFileError` when the bytes are not a TFLite flatbuffer (a zip or an empty file
    renamed `.tflite`), when the flatbuffer is too damaged to read, or when the entry is not a JSON object;
    messages name `name` (default: the path).
    """
    name = name or ("<model bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    data = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        what = ("the file is a zip archive" if data[:2] == b"PK" else "the file is empty" if not data
                else f"its first bytes are {bytes(data[:8]).hex(' ')}")
        raise ModelFileError(f"{name}: not a LiteRT model (no TFL3 flatbuffer identifier; {what})")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        if not 0 <= model.MetadataLength() <= MAX_METADATA_ENTRIES:
            raise ValueError(f"{model.MetadataLength()} metadata entries")
        payload = None
        for k in range(model.MetadataLength()):
            entry = model.Metadata(k)
            if _decode_name(entry.Name()) == METADATA_NAME:
                payload = bytes(model.Buffers(entry.Buffer()).DataAsNumpy())
    except Exception as exc:  # offsets of a damaged flatbuffer point anywhere: struct.error, IndexError, ...
        raise ModelFileError(f"{name}: damaged LiteRT model: its metadata cannot be read ({type(exc).__name__}: {exc})") from None
    if payload is None:
        return None
    try:
        meta = json.loads(payload.decode("utf-8"))
    except ValueError as exc:
        raise ModelFileError(f"{name}: the petal metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{name}: the petal metadata is not a JSON object")
    return meta


@dataclass(frozen=True)
class ModelInfo:
    """What a `.tflite` says about itself, checked: class names, input (height, width), pixel limit."""

    labels: tuple[str, ...]
    image_size: tuple[int, int]
    max_pixels: int


def check_metadata(meta: dict, name: str, input_shape, output_shape) -> ModelInfo:
    """Validate `meta` against sane bounds and against the model's own tensors, before anything is allocated.

    `input_shape`/`output_shape`: the interpreter's (batch, height, width, 3) and (batch, classes).
    Raises `ModelFileError` naming `name` and what disagrees.
    """
    def bad(what: str) -> ModelFileError:
        return ModelFileError(f"{name}: {what}")

    pre = meta.get("preprocessing")
    labels = meta.get("labels")
    if not isinstance(pre, dict):
        raise bad("the petal metadata has no 'preprocessing' object")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise bad("the petal metadata's 'labels' must be a list of at least two non-empty names")
    if len(set(labels)) != len(labels):
        raise bad("the petal metadata's 'labels' name a class twice")
    size = pre.get("image_size")
    if (not isinstance(size, list) or len(size) != 2 or not all(type(v) is int for v in size)
            or not all(1 <= v <= MAX_IMAGE_SIDE for v in size)):
        raise bad(f"image_size must be two whole numbers in 1..{MAX_IMAGE_SIDE}. Received: image_size={size!r}")
    max_pixels = pre.get("max_pixels", DEFAULT_MAX_PIXELS)
    if type(max_pixels) is not int or not 1 <= max_pixels <= MAX_PIXELS_BOUND:
        raise bad(f"max_pixels must be a whole number in 1..{MAX_PIXELS_BOUND:,}. Received: max_pixels={max_pixels!r}")
    if pre.get("resize") != RESIZE_METHOD:
        raise bad(f"made for resize method {pre.get('resize')!r}; this petal decodes with {RESIZE_METHOD!r}")
    input_shape, output_shape = [int(v) for v in input_shape], [int(v) for v in output_shape]
    if len(input_shape) != 4 or input_shape[1:] != [*size, 3]:
        raise bad(f"the metadata says the input is {size[0]}x{size[1]}x3, the model's input tensor is {input_shape[1:]}")
    if len(output_shape) != 2 or output_shape[1] != len(labels):
        raise bad(f"the metadata names {len(labels)} classes, the model's output tensor has shape {output_shape}")
    return ModelInfo(tuple(labels), (size[0], size[1]), max_pixels)


def _decode_name(name) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")
