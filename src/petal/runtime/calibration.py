"""Calibrated confidence and "not sure": a temperature and a confidence threshold, both fitted on the
validation split when training ends, stored in the run folder (calibration.json) and in every `.tflite`.

Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML
2017): probabilities are softmax(logits / T), with the one T > 0 that minimises the negative log-likelihood
of the validation labels. It never changes the predicted class, only how sure the model says it is
(label smoothing, used by petal's recipes, makes models under-confident: T < 1 then).

The threshold rule: sure predictions make half the mistakes. With validation accuracy a, the target
precision is 1 - (1 - a) / 2 (0.979 for a model 95.8% right, 0.8 for one 60% right), and the threshold is
the lowest calibrated confidence t such that the validation images predicted with confidence >= t are
right at least that often. A prediction below t is reported as "not sure" with its top classes; on a model
that never reaches the target, t is 1 (every prediction "not sure"). A fixed target would say nothing on a
good model (at 95%, a model 95.8% right is sure of everything, a chart included) and everything on a weak
one. No TensorFlow: the light runtime applies it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from petal.errors import ModelFileError

_LOG_T_RANGE = (-4.0, 4.0)  # the fit's search: T in [0.018, 55]
TEMPERATURE_RANGE = (math.exp(_LOG_T_RANGE[0]) * 0.999, math.exp(_LOG_T_RANGE[1]) * 1.001)  # what a file may hold
MIN_IMAGES = 25  # fewer validation images: no calibration (temperature 1, always sure) rather than a fit to noise


@dataclass(frozen=True)
class Calibration:
    """`temperature` divides the logits; a calibrated confidence below `threshold` is "not sure".
    The rest describes the fit on the validation split: its images, the share at or above the
    threshold (`coverage`) and their accuracy (`accuracy_when_sure`)."""

    temperature: float = 1.0
    threshold: float = 0.0
    target_precision: float | None = None
    images: int = 0
    coverage: float = 1.0
    accuracy_when_sure: float | None = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, classes) float logits -> calibrated (N, classes) float32 probabilities."""
        scaled = np.asarray(logits, dtype=np.float64) / self.temperature
        with np.errstate(invalid="ignore"):  # a broken model's NaN rows stay NaN, and the caller names them
            scaled -= scaled.max(axis=-1, keepdims=True)
            exp = np.exp(scaled)
            return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)

    @property
    def calibrated(self) -> bool:
        """False when the fit was skipped (fewer than MIN_IMAGES validation images) or the model predates it:
        then the temperature is 1 and every answer is sure, which says nothing."""
        return self.target_precision is not None

    def is_sure(self, confidence: float) -> bool:
        return confidence >= self.threshold

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None, name: str = "calibration") -> "Calibration":
        """None (a model exported before calibration existed): temperature 1, always sure.

        Raises:
            ModelFileError: not an object; a temperature that is not a number in the range a fit can give
                (TEMPERATURE_RANGE); a threshold that is not a number in 0..1; another field of the wrong type.
        """
        if values is None:
            return cls()
        if not isinstance(values, dict) or "temperature" not in values or "threshold" not in values:
            raise ModelFileError(f"{name}: the calibration must be an object with a temperature and a threshold")

        def number(key: str, low: float, high: float, optional: bool = False) -> float | None:
            value = values.get(key)
            if optional and value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN fails too
                raise ModelFileError(f"{name}: calibration {key} must be a number in {low:g}..{high:g}. Received: {key}={value!r}")
            return float(value)

        low, high = TEMPERATURE_RANGE
        images = values.get("images", 0)
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ModelFileError(f"{name}: calibration images must be a whole number >= 0. Received: images={images!r}")
        return cls(temperature=number("temperature", low, high), threshold=number("threshold", 0.0, 1.0),
                   target_precision=number("target_precision", 0.0, 1.0, optional=True), images=images,
                   coverage=number("coverage", 0.0, 1.0, optional=True) if "coverage" in values else 1.0,
                   accuracy_when_sure=number("accuracy_when_sure", 0.0, 1.0, optional=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean negative log-likelihood of softmax(logits / T) at `labels`
    ((N, classes) float, (N,) int): a golden-section search on log T, which the NLL is convex in."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        shifted = scaled - scaled.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[rows, labels]))

    low, high = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # the interval shrinks by 0.618 each step: 8 * 0.618**60 < 1e-11
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2)


def halved_error_target(accuracy: float) -> float:
    """The precision at which sure predictions make half the mistakes of all of them: 1 - (1 - accuracy) / 2."""
    return 1 - (1 - accuracy) / 2


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence t at which images with confidence >= t are right at least `target` of the
    time ((N,) float, (N,) bool); 1.0 when no t is."""
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # a threshold keeps every image tied with it: only the last position of each run of equal confidences counts
    last_of_value = np.append(sorted_confidence[1:] != sorted_confidence[:-1], True)
    meets = np.flatnonzero((precision >= target) & last_of_value)
    return float(sorted_confidence[meets[-1]]) if len(meets) else 1.0


def calibrate(logits: np.ndarray, labels: np.ndarray, target: float | None = None) -> Calibration:
    """Temperature and threshold from validation logits (N, classes) and labels (N,); `target` precision
    (default: halved_error_target of the accuracy). Below MIN_IMAGES images: none (always sure)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < MIN_IMAGES:
        logging.getLogger(__name__).warning(
            "only %d validation images (calibration needs %d): confidences are not calibrated and no answer is 'not sure'",
            len(labels), MIN_IMAGES)
        return Calibration(images=len(labels))
    temperature = fit_temperature(logits, labels)
    probabilities = Calibration(temperature).probabilities(logits)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    target = halved_error_target(float(correct.mean())) if target is None else target
    threshold = choose_threshold(confidence, correct, target)
    sure = confidence >= threshold
    return Calibration(
        temperature=round(temperature, 6), threshold=round(threshold, 6), target_precision=round(target, 6), images=len(labels),
        coverage=float(sure.mean()), accuracy_when_sure=float(correct[sure].mean()) if sure.any() else None,
    )
