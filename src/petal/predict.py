"""Predict classes of images with a run folder (Keras) or a `.tflite` file (LiteRT, no TensorFlow).

A `.tflite` written by `petal export` carries its labels and preprocessing, so it needs no other file.
Both backends feed the model through `petal.image.decode_image`, the function training used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from petal.errors import ImageError, RunFolderError
from petal.image import DEFAULT_MAX_PIXELS, RESIZE_METHOD, ImageSource, decode_image
from petal.metadata import read_metadata


@dataclass(frozen=True)
class Prediction:
    source: str
    label: str
    confidence: float  # probability of `label`, 0..1
    top: list[tuple[str, float]]  # (class, probability), most likely first
    probabilities: np.ndarray

    def sentence(self) -> str:
        """The tutorial's sentence: 'This image most likely belongs to X with a 98.02 percent confidence.'"""
        return f"{self.source} most likely belongs to {self.label} with a {100 * self.confidence:.2f} percent confidence."


@dataclass(frozen=True)
class PredictionError:
    source: str
    reason: str


class Predictor:
    """`Predictor.load(path)` for a run folder or a `.tflite`; then `predict(images)`."""

    def __init__(self, logits_fn, class_names, image_size, max_pixels=DEFAULT_MAX_PIXELS, description=""):
        self._logits = logits_fn
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

        meta = read_metadata(path)
        if meta is None:
            raise RunFolderError(f"{path}: this .tflite carries no petal metadata (labels, preprocessing); export it with `petal export`")
        pre = meta["preprocessing"]
        if pre["resize"] != RESIZE_METHOD:
            raise RunFolderError(f"{path}: made for resize method {pre['resize']!r}; this petal decodes with {RESIZE_METHOD!r}")
        runner = LiteRTRunner(Interpreter(model_path=str(path), num_threads=num_threads))
        return cls(runner, meta["labels"], pre["image_size"], pre.get("max_pixels", DEFAULT_MAX_PIXELS), f"LiteRT {path.name}")

    @classmethod
    def _from_run_folder(cls, path: Path) -> "Predictor":
        from petal.run import RunFolder

        run = RunFolder(path)
        config = run.config()
        model = run.load_model()
        return cls(
            lambda batch: np.asarray(model(batch, training=False)), run.class_names(), config.image_size, config.max_pixels, f"Keras {path}"
        )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch of decoded uint8 images (N, H, W, 3)."""
        return np.asarray(self._logits(np.asarray(batch, dtype=np.float32)), dtype=np.float32)

    def predict(self, images: Iterable[ImageSource], top_k: int = 3, batch_size: int = 32) -> Iterator[Prediction | PredictionError]:
        """One result per image, in order; an image that cannot be decoded yields a `PredictionError`."""
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

    def _flush(self, pending, top_k) -> Iterator[Prediction]:
        if not pending:
            return
        probabilities = softmax(self.logits(np.stack([image for _, image in pending])))
        for (name, _), probs in zip(pending, probabilities):
            order = np.argsort(probs)[::-1][:top_k]
            top = [(self.class_names[i], float(probs[i])) for i in order]
            yield Prediction(name, top[0][0], top[0][1], top, probs)


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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
