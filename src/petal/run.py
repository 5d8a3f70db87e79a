"""The run folder, the unit of record: where every file of a training run lives.

    config.json          the TrainConfig that made the run
    labels.txt           class names, one per line, in label order
    split/train.csv      the files trained on, and split/validation.csv those validated on
    skipped.csv          files left out because they could not be decoded, with the reason
    history.csv          one row per finished epoch
    timings.json         wall seconds of each stage: decode, embeddings, head, fine_tune, train
    parallel.json        strategy, replicas, global batch and peak learning rate
    .ray-train/          multi-worker training only, while it runs: Ray Train's records, the workers' scratch
    curves.png           training/validation accuracy and loss
    diagnosis.json       the overfitting diagnosis
    samples.png          a 3x3 grid of training images; augmentation.png the augmentation preview
    model.keras          the trained classifier (written when training ends)
    checkpoint/          epoch-N.keras + state.json after every epoch, for --resume; best.keras with early stopping
    export/              model-VARIANT.tflite, report.json/.md, calibration.csv, written by `petal export`
    evaluation/NAME/     metrics.json, mistakes.csv and PNGs, written by `petal evaluate`
    report.html          all of the above on one self-contained page (petal.report)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from petal.config import TrainConfig
from petal.data import ImageFolder, read_file_list
from petal.errors import RunFolderError


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config_path = property(lambda self: self.path / "config.json")
    labels_path = property(lambda self: self.path / "labels.txt")
    history_path = property(lambda self: self.path / "history.csv")
    model_path = property(lambda self: self.path / "model.keras")
    checkpoint_dir = property(lambda self: self.path / "checkpoint")
    export_dir = property(lambda self: self.path / "export")

    def require(self, *names: str) -> None:
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: no such run folder")
        for name in names:
            if not (self.path / name).exists():
                raise RunFolderError(f"{self.path}: not a finished run folder ({name} is missing)")

    def config(self) -> TrainConfig:
        self.require("config.json")
        return TrainConfig.load(self.config_path)

    def class_names(self) -> tuple[str, ...]:
        self.require("labels.txt")
        return tuple(line for line in self.labels_path.read_text(encoding="utf-8").splitlines() if line)

    def split(self, subset: str) -> ImageFolder:
        """The run's 'train' or 'validation' file list, against the data folder it was trained on."""
        path = self.path / "split" / f"{subset}.csv"
        if not path.exists():
            raise RunFolderError(f"{self.path}: {path.name} is missing from split/")
        return read_file_list(path, self.config().data_dir, self.class_names())

    def history(self) -> dict[str, list[float]]:
        if not self.history_path.exists():
            return {}
        with open(self.history_path, newline="") as f:
            rows = list(csv.DictReader(f))
        return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}

    def load_model(self):
        self.require("model.keras")
        import keras

        import petal.models  # noqa: F401  (registers petal's own Keras layers, which model.keras may hold)

        return keras.saving.load_model(self.model_path, compile=False)
