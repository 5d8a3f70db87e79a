"""The parity gate: every LiteRT variant beside the Keras model on the run's whole validation split, in one
streaming pass through the same decoded images (top-1 agreement, logit and probability differences,
accuracy), the gate's verdict per variant (ExportConfig), and each variant's speed."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from petal.config import ExportConfig
from petal.data.cache import CachedRows
from petal.errors import ExportError
from petal.runtime.native_log import native_log_silenced
from petal.runtime.predict import LiteRTRunner, rank_classes, softmax

PARITY_BATCH = 32
THROUGHPUT_BATCH = 32


@dataclass
class Speed:
    """Median single-image latency and batch throughput, per interpreter thread count."""

    latency_ms: dict[int, float] = field(default_factory=dict)
    images_per_second: dict[int, float] = field(default_factory=dict)


@dataclass
class VariantReport:
    variant: str
    images: int
    accuracy: float
    accuracy_drop: float  # Keras accuracy minus this variant's, in [0, 1]
    top1_agreement: float
    max_abs_logit_diff: float
    max_abs_probability_diff: float
    file_bytes: int
    input_dtype: str
    speed: Speed
    passed: bool
    failure: str | None = None  # why the gate stopped it
    path: str | None = None  # export/model-VARIANT.tflite, or export/rejected/ when the gate stopped it


def compare_with_keras(model, files: dict[str, bytes], images: CachedRows, config: ExportConfig,
                       progress=None) -> tuple[float, list[VariantReport]]:
    """Run Keras and every variant on each batch of `images` once; compare logits, probabilities, top-1.
    Returns Keras's accuracy and one report per variant. `progress`: a bar factory over the batches."""
    if len(images) == 0:
        raise ExportError("the run's validation split has no usable images to check the export against")
    runners = {variant: litert_runner(tflite) for variant, tflite in files.items()}
    stats = {variant: {"agree": 0, "right": 0, "logit": 0.0, "prob": 0.0} for variant in files}
    keras_right = 0
    labels = images.labels
    starts = range(0, len(images), PARITY_BATCH)
    for start in starts if progress is None else progress(starts, total=len(starts), desc="checking against Keras", unit="batch"):
        positions = np.arange(start, min(start + PARITY_BATCH, len(images)))
        batch = images.gather(positions).astype(np.float32)
        keras_logits = np.asarray(model.predict_on_batch(batch), dtype=np.float32)  # compiled: an eager call holds every activation
        if not np.isfinite(keras_logits).all():  # NaN agrees with NaN: the gate would pass a broken model
            raise ExportError("the Keras model's output is not a number (NaN or infinite) on validation images: the model is broken; "
                              "train it again")
        # Ranked as `petal evaluate` ranks the written file (petal.runtime.predict.rank_classes): ties count alike.
        keras_probs = softmax(keras_logits)
        keras_top = rank_classes(keras_probs)[:, 0]
        keras_right += int((keras_top == labels[positions]).sum())
        for variant, runner in runners.items():
            logits = runner(batch)
            top = rank_classes(softmax(logits))[:, 0]
            s = stats[variant]
            s["agree"] += int((top == keras_top).sum())
            s["right"] += int((top == labels[positions]).sum())
            s["logit"] = max(s["logit"], float(np.abs(logits - keras_logits).max()))
            s["prob"] = max(s["prob"], float(np.abs(softmax(logits) - keras_probs).max()))
    n = len(images)
    reports = []
    for variant, s in stats.items():
        report = VariantReport(
            variant=variant,
            images=n,
            accuracy=s["right"] / n,
            accuracy_drop=(keras_right - s["right"]) / n,
            top1_agreement=s["agree"] / n,
            max_abs_logit_diff=s["logit"],
            max_abs_probability_diff=s["prob"],
            file_bytes=len(files[variant]),
            input_dtype=np.dtype(runners[variant].input["dtype"]).name,
            speed=Speed(),
            passed=True,
        )
        report.failure = gate_failure(report, config)
        report.passed = report.failure is None
        reports.append(report)
    return keras_right / n, reports


def gate_failure(report: VariantReport, config: ExportConfig) -> str | None:
    """Why `report` fails the parity gate, or None: float variants must agree with Keras on almost
    every image; quantized ones may lose at most `max_accuracy_drop` accuracy."""
    if report.variant in ("float32", "float16"):
        if report.top1_agreement < config.min_float_agreement:
            return f"top-1 agreement with Keras {report.top1_agreement:.2%} < {config.min_float_agreement:.1%}"
        if report.variant == "float32" and report.max_abs_logit_diff > config.max_float32_logit_diff:
            return f"max |logit difference| {report.max_abs_logit_diff:.2e} > {config.max_float32_logit_diff:.0e}"
        return None
    if report.accuracy_drop > config.max_accuracy_drop:
        return f"accuracy {100 * report.accuracy_drop:.2f} points below Keras (at most {100 * config.max_accuracy_drop:.2f} allowed)"
    return None


def speed_batch(images: CachedRows) -> np.ndarray:
    """The images every speed measurement runs on: the first THROUGHPUT_BATCH, as float32."""
    return images.gather(np.arange(min(THROUGHPUT_BATCH, len(images)))).astype(np.float32)


def measure_speed(tflite: bytes, batch: np.ndarray, threads: tuple[int, ...]) -> Speed:
    """Median latency of one image and throughput on `batch`, for each interpreter thread count."""
    speed = Speed()
    for count in threads:
        speed.latency_ms[count], speed.images_per_second[count] = _time_calls(litert_runner(tflite, count), batch)
    return speed


def measure_keras_speed(model, batch: np.ndarray) -> Speed:
    latency, throughput = _time_calls(model.predict_on_batch, batch)
    return Speed(latency_ms={0: latency}, images_per_second={0: throughput})


def _time_calls(call, batch: np.ndarray, budget_s: float = 1.0) -> tuple[float, float]:
    """(median ms for one image, images per second on `batch`), each within about `budget_s`."""
    single = batch[:1]
    call(single), call(single)  # warm-up: allocation, delegate set-up
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        t = time.perf_counter()
        call(single)
        times.append(time.perf_counter() - t)
    call(batch)
    done, t = 0, time.perf_counter()
    while done < 3 * len(batch) or time.perf_counter() - t < budget_s:
        call(batch)
        done += len(batch)
    return 1000 * statistics.median(times), done / (time.perf_counter() - t)


def litert_runner(tflite: bytes, num_threads: int | None = None) -> LiteRTRunner:
    from ai_edge_litert.interpreter import Interpreter

    with native_log_silenced():  # "Created TensorFlow Lite XNNPACK delegate"
        return LiteRTRunner(Interpreter(model_content=tflite, num_threads=num_threads))


def input_dtype(tflite: bytes) -> str:
    return np.dtype(litert_runner(tflite).input["dtype"]).name
