"""The run folder, the unit of record: where every file of a training run lives.

    config.json          the TrainConfig that made the run
    labels.txt           class names, one per line, in label order
    split/train.csv      the files trained on, and split/validation.csv those validated on
    skipped.csv          files left out because they could not be decoded, with the reason
    history.csv          one row per finished epoch
    timings.json         wall seconds of each stage (decode, embeddings, head, fine_tune, train), over every process of the run
    parallel.json        strategy, replicas, global batch and peak learning rate
    .ray-train/          multi-worker training only, while it runs: Ray Train's records, the workers' scratch
    curves.png           training/validation accuracy and loss
    diagnosis.json       the overfitting diagnosis
    calibration.json     temperature and "not sure" threshold fitted on the validation split (petal.runtime.calibration)
    validation.json      the saved model's accuracy and confusion matrix on the validation split
    environment.json     when the run finished, petal/TensorFlow/Keras/Python versions, the machine
    copies.json          files with the same contents in both sides of the split, or under two classes
    samples.jpg          a 3x3 grid of training images; augmentation.jpg the augmentation preview
    model.keras          the trained classifier (written when training ends)
    checkpoint/          epoch-N.keras + state.json after every epoch, for --resume; best.keras with early stopping;
                         clock.json and timings.json, the run's time so far
    export/              model-VARIANT.tflite, report.json/.md, calibration.csv, written by `petal export`
    evaluation/NAME/     metrics.json, mistakes.csv and PNGs, written by `petal evaluate`
    report.html          all of the above on one self-contained page (petal.training.report)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import zipfile
from pathlib import Path

from petal import atomic
from petal.config import TrainConfig
from petal.data.index import ImageFolder, read_file_list, write_file_list
from petal.data.split import Split
from petal.errors import ModelFileError, RunFolderError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of every JSON file in the folder; raised when a key is removed or changes meaning
RECORDS = {name: f"{name}.json" for name in ("timings", "parallel", "diagnosis", "calibration", "validation", "environment", "copies")}


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
                started = name != "config.json" and self.config_path.is_file()
                resume = f"; if its training was stopped, continue it: {self.resume_command()}" if started else ""
                raise RunFolderError(f"{self.path}: not a finished run folder ({name} is missing){resume}")

    def resume_command(self) -> str:
        """The command that continues this run's training (its data folder from config.json)."""
        try:
            data_dir = read_json(self.config_path)["data_dir"]
        except (RunFolderError, KeyError, TypeError):  # config.json damaged: the command with a placeholder
            data_dir = "DATA_DIR"
        return f"petal train {shlex.quote(str(data_dir))} --out {shlex.quote(str(self.path))} --resume"

    def finished(self) -> bool:
        """Training wrote its last records (model.keras first, the diagnosis and report.html last)."""
        return all((self.path / name).exists() for name in ("model.keras", RECORDS["diagnosis"], "report.html"))

    def config(self) -> TrainConfig:
        self.require("config.json")
        return TrainConfig.load(self.config_path)

    def class_names(self) -> tuple[str, ...]:
        self.require("labels.txt")
        # Split on "\n" only: str.splitlines() would also cut names at \r, \x85 or \u2028, which folder names may hold.
        text = self.labels_path.read_bytes().decode("utf-8", "surrogateescape")
        names = tuple(line for line in text.split("\n") if line)
        if len(names) < 2 or len(set(names)) != len(names):
            raise RunFolderError(f"{self.labels_path}: damaged: expected two or more distinct class names, one per line "
                                 f"(found {len(names)}, {len(set(names))} distinct); train again")
        return names

    def split(self, subset: str, decoded: bool = False) -> ImageFolder:
        """The run's 'train' or 'validation' file list, against the data folder it was trained on; `decoded`: without
        the files training could not decode (skipped.csv), which it listed but never trained or validated on."""
        path = self.path / "split" / f"{subset}.csv"
        if not path.exists():
            raise RunFolderError(f"{self.path}: {path.name} is missing from split/")
        folder = read_file_list(path, self.config().data_dir, self.class_names())
        if not decoded:
            return folder
        skipped = self.skipped()
        kept = [i for i, p in enumerate(folder.paths) if p not in skipped]
        return ImageFolder(folder.root, folder.class_names, tuple(folder.paths[i] for i in kept), folder.labels[kept])

    def splits(self, decoded: bool = False) -> dict[str, ImageFolder]:
        """Every recorded subset (as `split` gives it): train and validation, and test when the folder had one."""
        return {subset: self.split(subset, decoded) for subset in ("train", "validation", "test")
                if (self.path / "split" / f"{subset}.csv").exists()}

    def history(self) -> dict[str, list[float]]:
        rows = self.history_rows()
        return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}

    def load_model(self):
        """model.keras, checked against the run's own records.

        Raises:
            RunFolderError: it is not the model config.json and labels.txt describe (its input size or number of
                outputs differ: edited by hand, or another run's model).
        """
        self.require("model.keras")
        model = load_keras_model(self.model_path)
        classes, (height, width) = len(self.class_names()), self.config().image_size
        if model.output_shape[-1] != classes:
            raise RunFolderError(f"{self.labels_path}: names {classes} classes, model.keras has {model.output_shape[-1]} outputs")
        if tuple(model.input_shape[1:3]) not in ((height, width), (None, None)):
            raise RunFolderError(f"{self.config_path}: says image size {height}x{width}, model.keras takes "
                                 f"{model.input_shape[1]}x{model.input_shape[2]}; train again into a new --out")
        return model

    # Writing. Each file is replaced atomically (petal.atomic): a killed command leaves the old one or the new one.

    def write_start(self, config: TrainConfig, split: Split) -> None:
        """config.json, labels.txt and split/*.csv: what a run is, written before its first epoch."""
        atomic.write_json(self.config_path, config.to_dict())
        atomic.write_text(self.labels_path, "\n".join(split.train.class_names) + "\n")
        for subset, folder in (("train", split.train), ("validation", split.validation), ("test", split.test)):
            if folder is not None:
                write_file_list(self.path / "split" / f"{subset}.csv", folder)

    def write_skipped(self, skipped: dict[str, str]) -> None:
        """skipped.csv: path and reason of each file left out."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180: csv then quotes names holding \r or \n
        writer.writerow(["path", "reason"])
        writer.writerows(sorted(skipped.items()))
        atomic.write_text(self.path / "skipped.csv", buffer.getvalue())

    def skipped(self) -> dict[str, str]:
        path = self.path / "skipped.csv"
        if not path.exists():
            return {}
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return {row["path"]: row["reason"] for row in csv.DictReader(f)}

    def write_record(self, name: str, values: dict) -> None:
        """One of the JSON records: "timings" (wall seconds per stage), "parallel" (how the run was spread),
        "diagnosis" (the overfitting verdict), "calibration" (temperature and "not sure" threshold),
        "validation" (the saved model's accuracy and confusion matrix), "environment" (versions, machine, time),
        "copies" (files with the same contents across the split or under two classes)."""
        atomic.write_json(self.path / RECORDS[name], {"schema_version": SCHEMA_VERSION, **values})

    def record(self, name: str) -> dict:
        """A JSON record by name (see write_record); {} when it has not been written."""
        path = self.path / RECORDS[name]
        values = read_json(path) if path.exists() else {}
        values.pop("schema_version", None)
        return values

    def write_history(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.history_path, buffer.getvalue())

    def history_rows(self) -> list[dict]:
        """history.csv as written, one dict of strings per epoch."""
        if not self.history_path.exists():
            return []
        try:
            with open(self.history_path, newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows:
                row["epoch"], row["loss"], row["val_accuracy"], [float(value) for value in row.values()]
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.history_path}: damaged ({type(exc).__name__}: {exc}); it cannot be resumed or reported: "
                                 "train again into a new --out") from None
        return rows

    def state(self) -> dict:
        """checkpoint/state.json: epochs done, the last checkpoint's file name, the best epoch so far."""
        path = self.checkpoint_dir / "state.json"
        return read_json(path) if path.exists() else {"epochs_done": 0, "best_epoch": 0, "best_val_accuracy": -1.0}

    def write_state(self, state: dict) -> None:
        """Commits an epoch: written after its checkpoint and history row."""
        atomic.write_json(self.checkpoint_dir / "state.json", state)

    def save_checkpoint(self, model, name: str) -> None:
        """checkpoint/NAME (a .keras file), written atomically; older epoch-*.keras files go once state.json names it."""
        with atomic.atomic_path(self.checkpoint_dir / name) as tmp:
            model.save(tmp)

    def remove_old_checkpoints(self, keep: str) -> None:
        for old in self.checkpoint_dir.glob("epoch-*.keras"):
            if old.name != keep:
                old.unlink(missing_ok=True)

    def write_litert_model(self, variant: str, tflite: bytes, deployable: bool) -> Path:
        """export/model-VARIANT.tflite, or export/rejected/ when the parity gate stopped it (for inspection, never
        where a model is looked for); the other place's stale copy is removed. Returns where it went."""
        kept = self.export_dir / f"model-{variant}.tflite"
        rejected = self.export_dir / "rejected" / kept.name
        remove_stale(rejected if deployable else kept)
        atomic.write_bytes(kept if deployable else rejected, tflite)
        return kept if deployable else rejected

    def write_export_report(self, report: dict, markdown: str) -> None:
        """export/report.json and report.md, and export/labels.txt for runtimes that cannot read petal's
        metadata (TFLite Task Library style: one label per line, in output order)."""
        atomic.write_json(self.export_dir / "report.json", {"schema_version": SCHEMA_VERSION, **report})
        atomic.write_text(self.export_dir / "report.md", markdown)
        atomic.write_bytes(self.export_dir / "labels.txt", self.labels_path.read_bytes())  # bytes: a "\r" in a class name stays one line
        remove_stale(self.export_dir / "parity.json")  # written by petal 0.1.0; report.json replaces it

    def recommended_model(self) -> str | None:
        """The exported .tflite to use: of those that passed the parity gate, the fastest at one thread (a phone's
        or a server request's case: a single image, one core); None before an export, or when none passed."""
        passed = [v for v in (self.export_report() or {}).get("variants", []) if v.get("passed")]

        def one_thread_latency(variant: dict) -> float:
            latency = variant["speed"]["latency_ms"]  # {threads: ms}; JSON keys are strings
            return latency.get("1", min(latency.values(), default=float("inf")))

        fastest = min(passed, key=one_thread_latency, default=None)
        return fastest["path"] if fastest else None

    def evaluations(self) -> list[tuple[str, dict]]:
        """(name, metrics.json) of every evaluation/NAME/ folder, by name."""
        found = []
        for path in sorted((self.path / "evaluation").glob("*/metrics.json")):
            found.append((path.parent.name, _with_keys(path, read_json(path), EVALUATION_KEYS)))
        return found

    def export_report(self) -> dict | None:
        path = self.export_dir / "report.json"
        return _with_keys(path, read_json(path), EXPORT_KEYS) if path.exists() else None


def duration(seconds: float) -> str:
    """A run's wall time (environment.json's `seconds`) as `petal train` and report.html give it: "2 min 5 s", "44 s"."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def remove_stale(path: Path) -> None:
    """Remove a file an earlier export wrote that this one replaces with nothing."""
    if path.exists():
        path.unlink()
        log.info("removed %s: it no longer matches this export", path)


# What the report reads of petal evaluate's metrics.json and petal export's report.json.
EVALUATION_KEYS = ("model", "data", "images", "accuracy", "top_k", "top_k_accuracy", "expected_calibration_error", "per_class")
EXPORT_KEYS = ("images", "keras_accuracy", "keras_file_bytes", "variants")


def _with_keys(path: Path, values: dict, keys: tuple[str, ...]) -> dict:
    missing = [key for key in keys if key not in values]
    if missing:
        raise RunFolderError(f"{path}: damaged: {', '.join(missing)} missing; run the command that wrote it again")
    return values


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object petal wrote. Raises RunFolderError naming the file when it is not one (damaged by hand,
    by a disk fault, or written by something else)."""
    try:
        values = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: cannot be read as JSON ({exc}); delete it or train again") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path}: expected a JSON object, found {type(values).__name__}; delete it or train again")
    return values


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
