"""Train a registered model on a folder and write the run folder.

The loss is categorical cross-entropy on logits (one-hot labels, so label smoothing, MixUp and CutMix
fit in); optimizer, schedule, augmentation and precision come from the TrainConfig. After every epoch a
checkpoint (model + optimizer state) and the history are written atomically, so a killed run continues
with `resume=True` from its last finished epoch. `model.keras` is always float32, whatever precision
training computed in, so export and prediction never see a 16-bit graph.
"""

from __future__ import annotations

import contextlib
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
from petal.augment import build_augmentation
from petal.cache import CachedImages, DecodeCache, default_cache_root
from petal.config import TrainConfig
from petal.data import Split, load_split, write_file_list
from petal.diagnosis import diagnose
from petal.errors import RunFolderError
from petal.models import create_model
from petal.pipeline import make_dataset
from petal.plots import save_curves, save_image_grid
from petal.precision import resolve_precision
from petal.report import build_report
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

    keras.utils.set_random_seed(config.training_seed + start_epoch)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    num_classes = len(class_names)
    augment = build_augmentation(config.augmentation, config.image_size, config.mixup, config.cutmix)
    policy = resolve_precision(config.precision)
    with _dtype_policy(policy):
        if start_epoch:
            model = keras.saving.load_model(run.checkpoint_dir / _checkpoint_state(run)["model"])
            log.info("resuming %s after epoch %d of %d", run.path, start_epoch, config.epochs)
        else:
            model = create_model(config.model, num_classes, config.image_size).classifier
            model.compile(
                optimizer=make_optimizer(config, steps_per_epoch=-(-len(data.train) // config.batch_size)),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
                metrics=["accuracy"],
            )
            _write_previews(run, data.train, class_names, augment)
        if verbose:
            model.summary()
        train_ds = make_dataset(data.train, config.batch_size, num_classes, shuffle_seed=config.training_seed,
                                start_epoch=start_epoch, augment=augment)
        val_ds = make_dataset(data.validation, config.batch_size, num_classes)
        recorder = _RunRecorder(run, config.early_stopping)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=start_epoch,
            class_weight=class_weights(data.train.labels, num_classes) if config.class_weight == "auto" else None,
            callbacks=[recorder],
            shuffle=False,  # the dataset shuffles, by (seed, epoch)
            verbose=verbose,
        )
        if config.early_stopping:
            best = recorder.state()
            log.info("keeping the weights of epoch %d (val accuracy %.4f)", best["best_epoch"], best["best_val_accuracy"])
            model = keras.saving.load_model(run.checkpoint_dir / "best.keras", compile=False)
    with atomic.atomic_path(run.model_path) as tmp:
        _inference_copy(model, config, num_classes).save(tmp)
    history = run.history()
    save_curves(history, run / "curves.png", title=f"{config.model} on {Path(config.data_dir).name}")
    diagnosis = diagnose(history)
    atomic.write_json(run / "diagnosis.json", diagnosis)
    build_report(run.path)
    return TrainResult(run, history, diagnosis, data.skipped)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or a schedule: linear warm-up, then cosine decay to 0 (or constant)."""
    warmup = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "constant" and not warmup:
        return config.learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(1, (config.epochs - config.warmup_epochs) * steps_per_epoch),
        alpha=0.0 if config.lr_schedule == "cosine" else 1.0,  # alpha 1: stays at the peak (constant)
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


@contextlib.contextmanager
def _dtype_policy(policy: str):
    """Keras's dtype policy is global: set it for this run only."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _inference_copy(model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """The same architecture built in float32 and not compiled, holding the trained (float32) weights:
    what model.keras keeps. No optimizer state (a third of the tutorial's 48 MB), no 16-bit layers."""
    twin = create_model(config.model, num_classes, config.image_size).classifier
    twin.set_weights(model.get_weights())
    return twin


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
    """After each epoch: checkpoint (and best.keras when val accuracy improved), then history, then
    state.json, which commits them. With `patience`, stops after that many epochs without improvement."""

    def __init__(self, run: RunFolder, patience: int = 0):
        super().__init__()
        self.run = run
        self.patience = patience
        self.started = time.perf_counter()

    def state(self) -> dict:
        path = self.run.checkpoint_dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"best_epoch": 0, "best_val_accuracy": -1.0}

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        logs = logs or {}
        name = f"epoch-{epoch + 1:04d}.keras"
        with atomic.atomic_path(self.run.checkpoint_dir / name) as tmp:
            self.model.save(tmp)
        state = self.state()
        best_epoch, best_value = state["best_epoch"], state["best_val_accuracy"]
        if logs.get("val_accuracy", -1.0) > best_value:
            best_epoch, best_value = epoch + 1, float(logs["val_accuracy"])
            if self.patience:
                with atomic.atomic_path(self.run.checkpoint_dir / "best.keras") as tmp:
                    self.model.save(tmp)
        rows = _read_rows(self.run.history_path)[:epoch]
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())},
                     "seconds": round(seconds, 3)})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.run.history_path, buffer.getvalue())
        atomic.write_json(self.run.checkpoint_dir / "state.json",
                          {"epochs_done": epoch + 1, "model": name, "best_epoch": best_epoch, "best_val_accuracy": best_value})
        for old in self.run.checkpoint_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)
        if self.patience and epoch + 1 - best_epoch >= self.patience:
            log.info("early stopping after epoch %d: no better val accuracy for %d epochs", epoch + 1, self.patience)
            self.model.stop_training = True


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


def _write_previews(run: RunFolder, images: CachedImages, class_names, augment) -> None:
    """samples.png: nine training images; augmentation.png: the first one through the augmentation nine times."""
    count = min(9, len(images))
    batch = images.gather(np.arange(count))
    save_image_grid(batch, [class_names[label] for label in images.labels[:count]], run / "samples.png")
    if augment is not None:
        first = np.repeat(batch[:1].astype("float32"), 9, axis=0)
        one_hot = np.eye(len(class_names), dtype="float32")[np.repeat(images.labels[:1], 9)]
        augmented, _ = augment(tf.constant(first), tf.constant(one_hot))
        save_image_grid(np.clip(np.asarray(augmented), 0, 255), [f"augmented {i + 1}" for i in range(9)], run / "augmentation.png")
