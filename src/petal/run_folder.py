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
    report.html          all of the above on one self-contained page (petal.training.report)
"""

from __future__ import annotations

import csv
import logging
import os
import zipfile
from pathlib import Path

from petal import atomic
from petal.config import TrainConfig
from petal.data.folder import ImageFolder, read_file_list
from petal.errors import ModelFileError, RunFolderError

log = logging.getLogger(__name__)


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        """Open a run folder (it need not exist yet). Every command opens its run folder through here, so
        the scratch files a killed command left in it (petal.atomic) are removed first."""
        self.path = Path(path)
        removed = atomic.remove_partials(self.path)
        if removed:
            log.info("%s: removed %d unfinished file(s) a killed petal command left: %s", self.path, len(removed),
                     ", ".join(str(p.relative_to(self.path)) for p in removed))

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
        # Split on "\n" only: str.splitlines() would also cut names at \r, \x85 or \u2028, which folder names may hold.
        text = self.labels_path.read_bytes().decode("utf-8", "surrogateescape")
        return tuple(line for line in text.split("\n") if line)

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
        return load_keras_model(self.model_path)


def load_keras_model(path: str | os.PathLike, *, compile: bool = False):
    """The Keras model in the `.keras` file `path`, loaded in Keras's safe mode (code inside the file,
    such as a Lambda layer's, is refused, never run).

    Raises `ModelFileError` naming the file when Keras cannot load it (missing, truncated, another
    format renamed, a Lambda layer refused by safe mode), instead of Keras's own traceback.
    """
    import keras

    import petal.training.models.flip_average  # noqa: F401  (registers petal's own Keras layers, which the file may hold)

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a file that is there
        raise ModelFileError(f"{path}: not a Keras .keras archive (truncated, or another format renamed .keras)")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, KeyError, OSError, ... depending on what is wrong inside
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelFileError(f"{path}: Keras cannot load this model ({type(exc).__name__}: {first_line})") from None
