"""Convert a run's model to a float32 LiteRT `.tflite` and prove it agrees with Keras.

Conversion allows built-in ops only (a Flex op would need the TensorFlow runtime on the device) and
sees only the classifier (augmentation never enters it). The file is written only after it agreed
with the Keras model on the run's whole validation split, through the same decoded images.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import petal
from petal import atomic
from petal.cache import CachedImages
from petal.errors import ExportError
from petal.image import RESIZE_METHOD
from petal.metadata import embed_metadata
from petal.predict import LiteRTRunner
from petal.run import RunFolder
from petal.train import decode_cache

log = logging.getLogger(__name__)

MIN_TOP1_AGREEMENT = 0.995
MAX_ABS_LOGIT_DIFF = 1e-3
PARITY_BATCH = 32


@dataclass
class ParityReport:
    variant: str
    images: int
    top1_agreement: float
    max_abs_logit_diff: float
    keras_accuracy: float
    litert_accuracy: float
    file_bytes: int
    passed: bool


@dataclass
class ExportResult:
    path: Path | None
    parity: ParityReport


def convert_to_tflite(model) -> bytes:
    """Float32 `.tflite` bytes of a Keras classifier, built-in ops only, with a dynamic batch size.

    Goes through a SavedModel written by Keras's `ExportArchive`, the conversion path TensorFlow
    documents for Keras 3 models.
    """
    height, width = model.input_shape[1:3]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="image")],
    )
    with tempfile.TemporaryDirectory(prefix="petal-export-") as saved_model:
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            return converter.convert()
        except Exception as exc:
            raise ExportError(f"LiteRT conversion with built-in ops failed: {exc}") from None


def model_metadata(run: RunFolder) -> dict:
    """What a `.tflite` must carry to be used alone: labels and the exact preprocessing."""
    config = run.config()
    return {
        "petal_version": petal.__version__,
        "model": config.model,
        "labels": list(run.class_names()),
        "output": "logits",
        "preprocessing": {
            "image_size": list(config.image_size),
            "resize": RESIZE_METHOD,
            "color": "RGB",
            "exif_orientation": "applied",
            "value_range": [0, 255],
            "input_dtype": "float32",
            "quantization": None,
            "max_pixels": config.max_pixels,
        },
    }


def check_parity(model, tflite: bytes, images: CachedImages, variant: str = "float32") -> ParityReport:
    """Run Keras and LiteRT on every image of `images` and compare logits and top-1 classes."""
    from ai_edge_litert.interpreter import Interpreter

    runner = LiteRTRunner(Interpreter(model_content=tflite))
    labels = images.labels
    agree = keras_right = litert_right = 0
    max_diff = 0.0
    for start in range(0, len(images), PARITY_BATCH):
        positions = np.arange(start, min(start + PARITY_BATCH, len(images)))
        batch = images.gather(positions).astype(np.float32)
        keras_logits = np.asarray(model(batch, training=False))
        litert_logits = runner(batch)
        max_diff = max(max_diff, float(np.abs(keras_logits - litert_logits).max()))
        keras_top, litert_top = keras_logits.argmax(-1), litert_logits.argmax(-1)
        agree += int((keras_top == litert_top).sum())
        keras_right += int((keras_top == labels[positions]).sum())
        litert_right += int((litert_top == labels[positions]).sum())
    n = len(images)
    agreement = agree / n
    return ParityReport(
        variant=variant,
        images=n,
        top1_agreement=agreement,
        max_abs_logit_diff=max_diff,
        keras_accuracy=keras_right / n,
        litert_accuracy=litert_right / n,
        file_bytes=len(tflite),
        passed=agreement >= MIN_TOP1_AGREEMENT and max_diff <= MAX_ABS_LOGIT_DIFF,
    )


def export_litert(run_dir: str | os.PathLike, progress=None) -> ExportResult:
    """Write RUN_DIR/export/model-float32.tflite (with labels and preprocessing inside) if it passes parity."""
    run = RunFolder(run_dir)
    run.require("config.json", "labels.txt", "model.keras")
    model = run.load_model()
    started = time.perf_counter()
    tflite = embed_metadata(convert_to_tflite(model), model_metadata(run))
    log.info("converted to LiteRT in %.1f s (%.2f MB)", time.perf_counter() - started, len(tflite) / 1e6)
    validation = decode_cache(run.config()).load(run.split("validation"), progress=progress)
    parity = check_parity(model, tflite, validation)
    atomic.write_json(run.export_dir / "parity.json", asdict(parity))
    if not parity.passed:
        raise ExportError(
            f"{run.path}: the float32 .tflite disagrees with the Keras model on the validation split "
            f"(top-1 agreement {parity.top1_agreement:.2%}, need >= {MIN_TOP1_AGREEMENT:.1%}; "
            f"max |logit difference| {parity.max_abs_logit_diff:.2e}, need <= {MAX_ABS_LOGIT_DIFF:.0e}); not written"
        )
    path = run.export_dir / "model-float32.tflite"
    atomic.write_bytes(path, tflite)
    return ExportResult(path, parity)
