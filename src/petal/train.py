"""Train a registered model on a folder and write the run folder.

The recipe is the tutorial's: Adam, sparse categorical cross-entropy on logits, accuracy. After every
epoch a checkpoint (model + optimizer state) and the history are written atomically, so a killed run
continues with `resume=True` from its last finished epoch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from petal import atomic
from petal.cache import CachedImages, DecodeCache, default_cache_root
from petal.config import TrainConfig
from petal.data import Split, load_split, write_file_list
from petal.diagnosis import diagnose
from petal.errors import RunFolderError
from petal.models import create_model
from petal.pipeline import make_dataset
from petal.plots import save_curves, save_image_grid
from petal.run import RunFolder

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    split: Split
    train: CachedImages
    validation: CachedImages

    @property
    def skipped(self) -> dict[str, str]:
        return {**self.train.failures, **self.validation.failures}


@dataclass
class TrainResult:
    run: RunFolder
    history: dict[str, list[float]]
    diagnosis: dict
    skipped: dict[str, str]


def make_split(config: TrainConfig) -> Split:
    return load_split(config.data_dir, config.val_split, config.seed, config.split_method)


def decode_cache(config: TrainConfig) -> DecodeCache:
    return DecodeCache(config.cache_dir or default_cache_root(), config.image_size, config.max_pixels)


def prepare_data(config: TrainConfig, split: Split, progress=None) -> PreparedData:
    """Decode the split's images, or read them from the decode cache."""
    cache = decode_cache(config)
    return PreparedData(split, cache.load(split.train, progress=progress), cache.load(split.validation, progress=progress))


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, verbose: int = 2, progress=None) -> TrainResult:
    run = RunFolder(out_dir)
    split, start_epoch = _start_or_resume(run, config, resume)
    data = prepare_data(config, split, progress=progress)
    class_names = data.split.train.class_names
    if data.skipped:
        _write_skipped(run, data.skipped)
        shown = ", ".join(sorted(data.skipped)[:3]) + (" ..." if len(data.skipped) > 3 else "")
        log.warning("left out %d files that could not be decoded: %s (see %s)", len(data.skipped), shown, run / "skipped.csv")
    if not len(data.train) or not len(data.validation):
        raise RunFolderError(f"{config.data_dir}: no decodable images left in the training or validation split")

    keras.utils.set_random_seed(config.seed + start_epoch)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec = create_model(config.model, len(class_names), config.image_size)
    if start_epoch:
        model = keras.saving.load_model(run.checkpoint_dir / _checkpoint_state(run)["model"])
        log.info("resuming %s after epoch %d of %d", run.path, start_epoch, config.epochs)
    else:
        model = spec.classifier
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        _write_previews(run, data.train, class_names, spec.augmentation)
    if verbose:
        model.summary()

    train_ds = make_dataset(
        data.train, config.batch_size, shuffle_seed=config.seed, start_epoch=start_epoch, augmentation=spec.augmentation
    )
    val_ds = make_dataset(data.validation, config.batch_size)
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        initial_epoch=start_epoch,
        class_weight=class_weights(data.train.labels, len(class_names)) if config.class_weight == "auto" else None,
        callbacks=[_RunRecorder(run)],
        shuffle=False,  # the dataset shuffles, by (seed, epoch)
        verbose=verbose,
    )

    with atomic.atomic_path(run.model_path) as tmp:
        model.save(tmp)
    history = run.history()
    save_curves(history, run / "curves.png", title=f"{config.model} on {Path(config.data_dir).name}")
    diagnosis = diagnose(history)
    atomic.write_json(run / "diagnosis.json", diagnosis)
    return TrainResult(run, history, diagnosis, data.skipped)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, 1.0 on average over the images: n / (classes * count)."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def _start_or_resume(run: RunFolder, config: TrainConfig, resume: bool) -> tuple[Split, int]:
    """Fresh start: write the run's config, labels and split. Resume: check them; return (split, epochs done)."""
    if resume:
        saved = run.config().to_dict()
        given = config.to_dict()
        if saved != given:
            changed = {k: (v, given[k]) for k, v in saved.items() if given[k] != v}
            raise RunFolderError(f"{run.path}: cannot resume with different settings (saved, given): {changed}")
        split = Split(run.split("train"), run.split("validation"), "recorded", config.val_split, config.seed)
        state = _checkpoint_state(run) if (run.checkpoint_dir / "state.json").exists() else None
        return split, state["epochs_done"] if state else 0
    if run.path.exists() and any(run.path.iterdir()):
        raise RunFolderError(
            f"{run.path}: run folder already exists and is not empty; pass --resume to continue it or choose another --out"
        )
    split = make_split(config)
    atomic.write_json(run.config_path, config.to_dict())
    atomic.write_text(run.labels_path, "\n".join(split.train.class_names) + "\n")
    write_file_list(run / "split" / "train.csv", split.train)
    write_file_list(run / "split" / "validation.csv", split.validation)
    if split.test is not None:
        write_file_list(run / "split" / "test.csv", split.test)
    return split, 0


def _checkpoint_state(run: RunFolder) -> dict:
    return json.loads((run.checkpoint_dir / "state.json").read_text())


class _RunRecorder(keras.callbacks.Callback):
    """After each epoch: checkpoint, then history, then state.json, which commits both."""

    def __init__(self, run: RunFolder):
        super().__init__()
        self.run = run
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        name = f"epoch-{epoch + 1:04d}.keras"
        with atomic.atomic_path(self.run.checkpoint_dir / name) as tmp:
            self.model.save(tmp)
        rows = _read_rows(self.run.history_path)[:epoch]
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in sorted((logs or {}).items())}, "seconds": round(seconds, 3)})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.run.history_path, buffer.getvalue())
        atomic.write_json(self.run.checkpoint_dir / "state.json", {"epochs_done": epoch + 1, "model": name})
        for old in self.run.checkpoint_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_skipped(run: RunFolder, skipped: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(skipped.items()))
    atomic.write_text(run / "skipped.csv", buffer.getvalue())


def _write_previews(run: RunFolder, images: CachedImages, class_names, augmentation) -> None:
    """samples.png: nine training images; augmentation.png: the first one through the augmentation nine times."""
    count = min(9, len(images))
    batch = images.gather(np.arange(count))
    save_image_grid(batch, [class_names[label] for label in images.labels[:count]], run / "samples.png")
    if augmentation is not None:
        first = np.repeat(batch[:1].astype("float32"), 9, axis=0)
        augmented = [np.asarray(augmentation(first[i : i + 1], training=True))[0] for i in range(9)]
        save_image_grid(augmented, [f"augmented {i + 1}" for i in range(9)], run / "augmentation.png")
