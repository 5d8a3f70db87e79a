"""Labels and preprocessing inside a `.tflite` file, written and read without TensorFlow.

The entry is a named item of the flatbuffer's standard `metadata` list (the list where the converter
itself records `min_runtime_version`), holding UTF-8 JSON. Any LiteRT/TFLite interpreter still loads
the file unchanged; `read_metadata` (or any flatbuffer reader of the TFLite schema) gets it back.
It is not the `TFLITE_METADATA` table of tflite-support, which cannot be installed beside TF 2.21.
"""

from __future__ import annotations

import json
import os

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

METADATA_NAME = "petal"


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


def read_metadata(source: str | os.PathLike | bytes) -> dict | None:
    """The 'petal' metadata of a `.tflite` file or its bytes; None if the file has none."""
    data = source if isinstance(source, (bytes, bytearray)) else open(source, "rb").read()
    model = schema.Model.GetRootAsModel(data, 0)
    for k in range(model.MetadataLength()):
        entry = model.Metadata(k)
        if _decode_name(entry.Name()) == METADATA_NAME:
            return json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8"))
    return None


def _decode_name(name) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")
