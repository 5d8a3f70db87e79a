"""Convert a run's model to LiteRT variants and let only those that agree with Keras through.

Every variant (float32, float16, dynamic-range, full-integer int8) is converted with built-in ops
only (a Flex op would need the TensorFlow runtime on the device) from one SavedModel of the
classifier (augmentation never enters it). Each is then run through `ai_edge_litert` on the run's
whole validation split, beside the Keras model and through the same decoded images, in one
streaming pass. A variant is written to `export/` only if it passes the parity gate of its
`ExportConfig`; the report (JSON and Markdown) says why one did not.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

import petal
from petal import atomic
from petal.config import ExportConfig
from petal.data.decode import RESIZE_METHOD
from petal.data.index import ImageFolder, write_file_list
from petal.errors import ExportError
from petal.run_folder import RunFolder, remove_stale
from petal.runtime.metadata import embed_metadata
from petal.runtime.native_log import native_log_silenced
from petal.training.loop import decode_cache
from petal.training.parity import (
    Speed,
    VariantReport,
    compare_with_keras,
    input_dtype,
    measure_keras_speed,
    measure_speed,
    speed_batch,
)
from petal.training.report import build_report

log = logging.getLogger(__name__)

# What each variant's quantization is, as recorded in the file's metadata.
QUANTIZATION = {
    "float32": None,
    "float16": "float16 weights",
    "dynamic": "dynamic-range: int8 weights, float activations",
    "int8": "full-integer: int8 weights and activations",
}


@dataclass
class ExportReport:
    run: str
    config: dict
    keras_accuracy: float
    keras_file_bytes: int
    keras_speed: Speed  # TensorFlow with its default threads
    images: int
    variants: list[VariantReport]
    calibrated_on: int | None = None  # images that calibrated int8 (config.calibration_images or every training image, if fewer)

    @property
    def failed(self) -> list[VariantReport]:
        return [v for v in self.variants if not v.passed]

    def markdown(self) -> str:
        threads = sorted({t for v in self.variants for t in v.speed.latency_ms})
        head = ["variant", "size (MB)", "accuracy", "Δ acc (points)", "top-1 agreement", "max abs Δlogit", "max abs Δprob"]
        head += [f"latency ms ({t} thr)" for t in threads] + [f"img/s, batch of 32 ({t} thr)" for t in threads] + ["gate"]
        rows = [["Keras", f"{self.keras_file_bytes / 1e6:.2f}", f"{self.keras_accuracy:.4f}", *["—"] * (len(head) - 4), "reference"]]
        for v in self.variants:
            io = "" if v.input_dtype == "float32" else f" ({v.input_dtype} io)"
            rows.append([
                v.variant + io, f"{v.file_bytes / 1e6:.2f}", f"{v.accuracy:.4f}", f"{0.0 - 100 * v.accuracy_drop:+.2f}",
                f"{v.top1_agreement:.2%}", f"{v.max_abs_logit_diff:.2e}", f"{v.max_abs_probability_diff:.2e}",
                *[f"{v.speed.latency_ms[t]:.2f}" for t in threads], *[f"{v.speed.images_per_second[t]:.0f}" for t in threads],
                "pass" if v.passed else f"FAIL: {v.failure}",
            ])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        keras_speed = self.keras_speed.latency_ms[0], self.keras_speed.images_per_second[0]
        note = (f"\n{self.images} validation images of `{self.run}`. Δ acc: the variant's accuracy minus Keras's. "
                f"Keras itself (TensorFlow, default threads): {keras_speed[0]:.2f} ms per image, {keras_speed[1]:.0f} img/s.\n")
        return "\n".join(lines) + "\n" + note


def export_litert(
    run_dir: str | os.PathLike,
    config: ExportConfig | None = None,
    calibration_images: np.ndarray | None = None,
    progress=None,
) -> ExportReport:
    """Convert, check and write every variant of `config`; a variant that fails the gate is reported
    (and written to export/rejected/) unless `config.gate` is off.

    `calibration_images` (N, H, W, 3) uint8 overrides the int8 calibration set, which is otherwise
    `config.calibration_images` training images (never validation images), listed in export/calibration.csv.
    """
    config = config or ExportConfig()
    run = RunFolder(run_dir)
    run.require("config.json", "labels.txt", "model.keras")
    with atomic.held(run.path, "export"):  # another export, or a training --resume, would write the same files
        return _export(run, config, calibration_images, progress)


def _export(run: RunFolder, config: ExportConfig, calibration_images: np.ndarray | None, progress) -> ExportReport:
    train_config = run.config()
    model = run.load_model()
    cache = decode_cache(train_config)
    if "int8" in config.variants and calibration_images is None:
        calibration_images = _calibration_set(run, cache, config, progress)
    elif "int8" in config.variants:
        remove_stale(run.export_dir / "calibration.csv")  # the caller's own images calibrate this time

    started = time.perf_counter()
    with native_log_silenced():  # the converter's MLIR notices
        converted = convert_variants(model, config, calibration_images, progress)
    log.info("converted %s in %.1f s", ", ".join(converted), time.perf_counter() - started)
    files = {
        variant: embed_metadata(tflite, model_metadata(run, variant, input_dtype(tflite)))
        for variant, tflite in converted.items()
    }

    validation = cache.load(run.split("validation"), progress=progress)
    keras_accuracy, reports = compare_with_keras(model, files, validation, config, progress)
    timing_batch = speed_batch(validation)
    for report in reports if progress is None else progress(reports, total=len(reports), desc="timing", unit="variant"):
        report.speed = measure_speed(files[report.variant], timing_batch, config.threads)

    for report in reports:
        report.path = str(run.write_litert_model(report.variant, files[report.variant], deployable=report.passed or not config.gate))
    result = ExportReport(
        run=str(run.path),
        config=config.to_dict(),
        keras_accuracy=keras_accuracy,
        keras_file_bytes=run.model_path.stat().st_size,
        keras_speed=measure_keras_speed(model, timing_batch),
        images=len(validation),
        variants=reports,
        calibrated_on=None if calibration_images is None else len(calibration_images),
    )
    run.write_export_report(asdict(result), result.markdown())
    build_report(run.path)
    return result


def convert_variants(model, config: ExportConfig, calibration_images: np.ndarray | None, progress=None) -> dict[str, bytes]:
    """`.tflite` bytes of each variant in `config.variants`, all from one SavedModel. `progress`: a bar factory
    (petal.cli.common.progress_bar) shown over the variants."""
    height, width = model.input_shape[1:3]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="image")],
    )
    atomic.remove_partials(tempfile.gettempdir(), recursive=False)  # what a killed export left there
    with atomic.scratch_dir("petal-export") as saved_model:
        archive.write_out(str(saved_model), verbose=False)
        variants = config.variants if progress is None else progress(config.variants, total=len(config.variants), desc="converting", unit="variant")
        return {variant: _convert(str(saved_model), variant, config, calibration_images) for variant in variants}


def _convert(saved_model: str, variant: str, config: ExportConfig, calibration_images: np.ndarray | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        converter.representative_dataset = lambda: _representative(calibration_images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if config.int8_io != "float32":
            converter.inference_input_type = converter.inference_output_type = tf.as_dtype(config.int8_io)
    try:
        return converter.convert()
    except Exception as exc:
        raise ExportError(f"LiteRT conversion of the {variant} variant with built-in ops failed: {exc}") from None


def _representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for image in images:
        yield [image[np.newaxis].astype(np.float32)]


def _calibration_set(run: RunFolder, cache, config: ExportConfig, progress) -> np.ndarray:
    """A seeded sample of training images, recorded in export/calibration.csv."""
    train = run.split("train", decoded=True)  # the training images: not the files training could not decode
    count = min(config.calibration_images, len(train))
    picked = np.sort(np.random.RandomState(run.config().seed).choice(len(train), count, replace=False))
    sample = ImageFolder(train.root, train.class_names, tuple(train.paths[i] for i in picked), train.labels[picked])
    images = cache.load(sample, progress=progress)
    write_file_list(run.export_dir / "calibration.csv", ImageFolder(train.root, train.class_names, tuple(images.paths), images.labels))
    return images.gather(np.arange(len(images)))


def model_metadata(run: RunFolder, variant: str = "float32", input_dtype: str = "float32") -> dict:
    """What a `.tflite` must carry to be used alone: labels, the exact preprocessing and the calibration."""
    config = run.config()
    return {
        "petal_version": petal.__version__,
        "model": config.model,
        "variant": variant,
        "labels": list(run.class_names()),
        "output": "logits",
        "test_time_flip": config.test_time_flip,  # the file already averages over mirror images: do not again
        "calibration": run.record("calibration") or None,  # temperature and "not sure" threshold (petal.runtime.calibration)
        "preprocessing": {
            "image_size": list(config.image_size),
            "resize": RESIZE_METHOD,
            "color": "RGB",
            "exif_orientation": "applied",
            "value_range": [0, 255],
            "model_input": config.preprocessing,  # what the model itself does to those values
            "input_dtype": input_dtype,
            "quantization": QUANTIZATION[variant],
            "max_pixels": config.max_pixels,
        },
    }
