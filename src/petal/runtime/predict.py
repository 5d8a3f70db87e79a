"""Predict classes of images with a run folder (Keras) or a `.tflite` file (LiteRT, no TensorFlow).

A `.tflite` written by `petal export` carries its labels, preprocessing and calibration, so it needs no
other file. Probabilities are calibrated (softmax of logits over the fitted temperature) and a prediction
below the calibrated threshold is marked not sure.
Both backends feed the model through `petal.data.decode.decode_image`, the function training used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from petal.data.decode import DEFAULT_MAX_PIXELS, ImageSource, decode_image, largest_batch, open_regular
from petal.errors import ConfigError, ImageError, ModelFileError, RunFolderError
from petal.runtime.calibration import Calibration
from petal.runtime.metadata import check_metadata, read_metadata
from petal.runtime.native_log import native_log_silenced


@dataclass(frozen=True)
class Prediction:
    source: str
    label: str
    confidence: float  # probability of `label`, 0..1
    top: list[tuple[str, float]]  # (class, probability), most likely first; ties in label order (`rank_classes`)
    probabilities: np.ndarray
    tied: tuple[str, ...] = ()  # every class whose probability equals `confidence`, `label` first (int8 outputs tie often)
    sure: bool = True  # confidence reaches the model's calibrated threshold (petal.runtime.calibration)

    def sentence(self) -> str:
        """The tutorial's sentence: 'This image most likely belongs to X with a 98.02 percent confidence.'
        A tie says so: 'X is a tie between daisy and tulips (27.09 percent each); reported as daisy, the first in label order.'
        Below the model's threshold: 'X: not sure: roses 43.10%, tulips 31.02%'."""
        if not self.sure:
            return f"{self.source}: not sure: " + ", ".join(f"{name} {100 * p:.2f}%" for name, p in self.top[:2])
        if len(self.tied) > 1:
            names = ", ".join(self.tied[:-1]) + f" and {self.tied[-1]}"
            return (f"{self.source} is a tie between {names} ({100 * self.confidence:.2f} percent each); "
                    f"reported as {self.label}, the first in label order.")
        return f"{self.source} most likely belongs to {self.label} with a {100 * self.confidence:.2f} percent confidence."

    def top_line(self) -> str:
        """'top 3: daisy 27.09% = tulips 27.09%, roses 20.00%': tied neighbours are joined by '='."""
        parts = [f"{self.top[0][0]} {100 * self.top[0][1]:.2f}%"]
        for (_, previous), (name, p) in zip(self.top, self.top[1:]):
            parts.append((" = " if p == previous else ", ") + f"{name} {100 * p:.2f}%")
        return f"top {len(self.top)}: " + "".join(parts)


@dataclass(frozen=True)
class PredictionError:
    source: str
    reason: str


class Predictor:
    """`Predictor.load(path)` for a run folder or a `.tflite`; then `predict(images)`."""

    def __init__(self, logits_fn, class_names, image_size, max_pixels=DEFAULT_MAX_PIXELS, description="",
                 calibration: Calibration | None = None):
        self._logits = logits_fn
        self.calibration = calibration or Calibration()
        self.class_names = tuple(class_names)
        self.image_size = tuple(image_size)
        self.max_pixels = max_pixels
        self.description = description

    @classmethod
    def load(cls, path: str | os.PathLike, num_threads: int | None = None) -> "Predictor":
        path = Path(path)
        if path.is_dir():
            return cls._from_run_folder(path)
        if path.suffix == ".tflite" and path.is_file():
            return cls._from_tflite(path, num_threads)
        raise RunFolderError(f"{path}: expected a run folder or a .tflite file")

    @classmethod
    def _from_tflite(cls, path: Path, num_threads: int | None) -> "Predictor":
        from ai_edge_litert.interpreter import Interpreter

        try:
            with open_regular(path) as f:
                data = f.read()
        except ImageError as exc:
            raise ModelFileError(f"{path}: {exc.reason}") from None
        meta = read_metadata(data, str(path))
        if meta is None:
            raise RunFolderError(f"{path}: this .tflite carries no petal metadata (labels, preprocessing); export it with `petal export`")
        try:
            with native_log_silenced():  # LiteRT's notices, on the error paths too
                interpreter = Interpreter(model_content=data, num_threads=num_threads)
                inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        except Exception as exc:  # LiteRT's verifier refuses damaged flatbuffers with ValueError/RuntimeError
            raise ModelFileError(f"{path}: LiteRT cannot load this model ({type(exc).__name__}: {_first_line(exc)})") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output tensor, found {len(inputs)} and {len(outputs)}")
        # Checked before allocate_tensors: a file that claims a huge input never gets its memory.
        info = check_metadata(meta, str(path), inputs[0]["shape"], outputs[0]["shape"])
        for tensor in (inputs[0], outputs[0]):
            if np.dtype(tensor["dtype"]).kind != "f" and not (np.isfinite(tensor["quantization"][0]) and tensor["quantization"][0] > 0):
                raise ModelFileError(f"{path}: integer tensor {tensor['name']!r} has no positive quantization scale")
        try:
            with native_log_silenced():  # allocate_tensors applies XNNPACK, which says so on stderr
                runner = LiteRTRunner(interpreter)
        except Exception as exc:
            raise ModelFileError(f"{path}: LiteRT cannot prepare this model ({type(exc).__name__}: {_first_line(exc)})") from None
        return cls(runner, info.labels, info.image_size, info.max_pixels, f"LiteRT {path.name}",
                   Calibration.from_dict(meta.get("calibration"), str(path)))

    @classmethod
    def _from_run_folder(cls, path: Path) -> "Predictor":
        from petal.run_folder import RunFolder

        run = RunFolder(path)
        config = run.config()
        model = run.load_model()
        calibration = Calibration.from_dict(run.record("calibration") or None, str(run / "calibration.json"))
        return cls(model.predict_on_batch, run.class_names(), config.image_size, config.max_pixels,
                   f"Keras {path}", calibration)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of decoded uint8 images (N, H, W, 3)."""
        return np.asarray(self._logits(np.asarray(batch, dtype=np.float32)), dtype=np.float32)

    def predict(self, images: Iterable[ImageSource], top_k: int = 3, batch_size: int = 32) -> Iterator[Prediction | PredictionError]:
        """One result per image, in order; an image that cannot be decoded yields a `PredictionError`.
        `batch_size` images per model call, at most `largest_batch(image_size)` (2 GiB of pixels) whatever is asked.

        Raises:
            ConfigError: top_k or batch_size below 1.
        """
        if top_k < 1 or batch_size < 1:
            raise ConfigError(f"top_k and batch_size must be at least 1. Received: top_k={top_k}, batch_size={batch_size}")
        batch_size = min(batch_size, largest_batch(self.image_size))
        pending: list[tuple[str, np.ndarray]] = []
        for source in images:
            name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<image>"
            try:
                pending.append((name, decode_image(source, self.image_size, max_pixels=self.max_pixels)))
            except ImageError as exc:
                yield from self._flush(pending, top_k)
                pending = []
                yield PredictionError(name, exc.reason)
                continue
            if len(pending) == batch_size:
                yield from self._flush(pending, top_k)
                pending = []
        yield from self._flush(pending, top_k)

    def _flush(self, pending, top_k) -> Iterator[Prediction | PredictionError]:
        if not pending:
            return
        logits = self.logits(np.stack([image for _, image in pending]))
        probabilities = self.calibration.probabilities(logits)
        for (name, _), probs, finite in zip(pending, probabilities, np.isfinite(logits).all(axis=1)):
            if not finite:  # a broken model (a training that diverged): no class is more likely than another
                yield PredictionError(name, f"{self.description}: the model's output is not a number (NaN or infinite); the model is broken")
                continue
            order = rank_classes(probs)
            top = [(self.class_names[i], float(probs[i])) for i in order[:top_k]]
            tied = tuple(self.class_names[i] for i in order if probs[i] == probs[order[0]])
            yield Prediction(name, top[0][0], top[0][1], top, probs, tied, self.calibration.is_sure(top[0][1]))


class LiteRTRunner:
    """Calls a LiteRT interpreter on float batches of any size and returns float logits.

    Resizes the input only when the batch size changes; quantizes the input and dequantizes the
    output of integer-only models (int8 with uint8/int8 tensors) with the scales stored in the file.
    """

    def __init__(self, interpreter):
        self.interpreter = interpreter
        interpreter.allocate_tensors()  # delegates (XNNPACK) are applied here, at load time
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        self.batch = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.batch != len(batch):
            self.interpreter.resize_tensor_input(self.input["index"], [len(batch), *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.batch = len(batch)
        self.interpreter.set_tensor(self.input["index"], _quantize(batch, self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


def _quantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    dtype = np.dtype(tensor["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype)
    scale, zero_point = tensor["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, tensor: dict) -> np.ndarray:
    if np.dtype(tensor["dtype"]).kind == "f":
        return values.astype(np.float32)  # a copy: the interpreter reuses its buffer
    scale, zero_point = tensor["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def rank_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices from most to least likely along the last axis; equal values in label order.

    The one tie rule of petal: `petal predict`, `evaluate`, `serve`, `predict-batch` and the export
    gate all rank with it, and its first index is `np.argmax`'s (the first of the tied classes), as
    in Keras's accuracy metrics. (..., classes) float -> (..., classes) int64.
    """
    return np.argsort(-np.asarray(probabilities), axis=-1, kind="stable")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
