"""Train a registered model on a folder and write the run folder.

The loss is categorical cross-entropy on logits (one-hot labels, so label smoothing, MixUp and CutMix
fit in); optimizer, schedule, augmentation and precision come from the TrainConfig. After every epoch a
checkpoint (model + optimizer state) and the history are written atomically, so a killed run continues
with `resume=True` from its last finished epoch. `model.keras` is always float32, whatever precision
training computed in, so export and prediction never see a 16-bit graph.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

import petal
from petal import atomic
from petal.config import TrainConfig
from petal.data.cache import CachedRows, DecodeCache, default_cache_root
from petal.data.index import is_inside
from petal.data.split import Split, load_split
from petal.errors import ConfigError, OutOfMemoryError, RunFolderError, counted, printable
from petal.registry import ModelSpec, create_model, get_model_entry
from petal.run_folder import RunFolder, load_keras_model
from petal.runtime.calibration import calibrate
from petal.training.augment import build_augmentation
from petal.training.checkpoints import EpochSeconds, RunClock, RunRecorder, StageTimings
from petal.training.diagnosis import diagnose
from petal.training.embeddings import EmbeddingCache
from petal.training.models.backbones import fine_tuning_model, top_blocks, unfreeze_top_blocks
from petal.training.models.flip_average import with_test_time_flip
from petal.training.optimization import class_weights, compile_for_training, compile_like, dtype_policy
from petal.training.pipeline import make_dataset
from petal.training.plots import save_curves, save_image_grid
from petal.training.precision import device, resolve_precision
from petal.training.report import build_report

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    split: Split
    train: CachedRows
    validation: CachedRows

    @property
    def skipped(self) -> dict[str, str]:
        return {**self.train.failures, **self.validation.failures}


@dataclasses.dataclass
class TrainResult:
    run: RunFolder
    history: dict[str, list[float]]
    diagnosis: dict
    skipped: dict[str, str]


def make_split(config: TrainConfig) -> Split:
    return load_split(config.data_dir, config.val_split, config.seed, config.split_method, layout=config.layout,
                      follow_links=config.follow_links, exclude=config.exclude)


def decode_cache(config: TrainConfig) -> DecodeCache:
    return DecodeCache(config.cache_dir or default_cache_root(), config.image_size, config.max_pixels)


def prepare_data(config: TrainConfig, split: Split, progress=None) -> PreparedData:
    """Decode the split's images, or read them from the decode cache."""
    cache = decode_cache(config)
    return PreparedData(split, cache.load(split.train, progress=progress), cache.load(split.validation, progress=progress))


def finished_run(run: RunFolder) -> TrainResult:
    """--resume of a run that has finished: its result as recorded; nothing is trained or written again."""
    log.info("%s: finished already (model.keras, report.html); nothing to resume", run.path)
    return TrainResult(run, run.history(), run.record("diagnosis"), run.skipped())


def report_skipped(run: RunFolder, skipped: dict[str, str]) -> None:
    """RUN/skipped.csv and one warning naming the first files, when some of the split could not be decoded."""
    if skipped:
        run.write_skipped(skipped)
        shown = printable(", ".join(sorted(skipped)[:3]) + (" ..." if len(skipped) > 3 else ""))
        log.warning("left out %s that could not be decoded: %s (see %s)", counted(len(skipped), "file"), shown, run / "skipped.csv")


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, verbose: int = 2, progress=None,
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train in this process: on one device, or with config.strategy "mirrored" on every local GPU (or
    logical device). Multi-worker training goes through petal.scale.multi_worker.train_on_ray.

    Args:
        config: every setting; saved as RUN/config.json.
        out_dir: the run folder; must be empty unless `resume`.
        resume: continue the run in `out_dir` from its last finished epoch.
        verbose: Keras's fit verbosity (0 silent, 1 a bar per epoch, 2 a line per epoch).
        progress: a bar factory (petal.cli.common.progress_bar) for decoding and embedding.
        callbacks: Keras callbacks for every `fit` of the run (the head's on embeddings too), after
            petal's own; TensorBoard logs are always written to RUN/tensorboard/.

    Raises:
        ConfigError, RunFolderError, DataError, WeightsError: one line naming what is wrong.
    """
    if config.strategy == "multi-worker":
        raise ConfigError("strategy 'multi-worker' runs on Ray: petal.scale.multi_worker.train_on_ray (petal train --workers N)")
    entry = check_model_settings(config)
    config = dataclasses.replace(config, preprocessing=entry.preprocessing)
    run = RunFolder(out_dir)
    check_out(run, config)
    with atomic.held(run.path, "train"):  # a second train, a --resume or an export of this folder is refused meanwhile
        split, start_epoch = plan_run(run, config, resume)
        if resume and run.finished():
            return finished_run(run)
        with RunClock(run) as clock:
            try:
                return _train(run, config, entry, split, start_epoch, clock, verbose, progress, callbacks)
            except tf.errors.ResourceExhaustedError as exc:
                first_line = (exc.message or str(exc)).strip().splitlines()[0][:200]
                raise OutOfMemoryError(
                    f"out of memory training {config.model} at image size {config.image_size[0]}x{config.image_size[1]}, batch size "
                    f"{config.batch_size} ({first_line}): use a smaller --image-size or --batch-size in a new --out") from None


def _train(run: RunFolder, config: TrainConfig, entry, split: Split, start_epoch: int, clock: RunClock, verbose: int, progress,
           callbacks) -> TrainResult:
    timings = StageTimings(run)
    class_names = split.train.class_names
    num_classes = len(class_names)
    keras.utils.set_random_seed(config.training_seed + start_epoch)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = local_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    with dtype_policy(resolve_precision(config.precision)), strategy.scope():
        # Built before anything is written: pretrained weights that cannot be had stop the run here.
        spec = None if start_epoch else build_classifier(config, num_classes)
        if spec is not None and entry.pretrained:
            top_blocks(spec.classifier, entry.block_pattern, config.fine_tune_blocks)  # refuse too many now, not after the head
        if not start_epoch:
            run.write_start(config, split)
        write_parallelism(run, config, config.strategy, replicas)
        with timings.timed("decode"):
            data = prepare_data(config, split, progress=progress)
        report_skipped(run, data.skipped)
        if not len(data.train) or not len(data.validation):
            raise RunFolderError(f"{config.data_dir}: no decodable images left in the training or validation split")
        counts = np.bincount(data.train.labels, minlength=num_classes)
        if not counts.all():  # the split saw files; none of them decoded
            empty = ", ".join(printable(class_names[c]) for c in np.flatnonzero(counts == 0))
            raise RunFolderError(f"{config.data_dir}: class(es) {empty} have no decodable training images (see {run / 'skipped.csv'}); "
                                 f"fix or remove them, then train again with --resume (nothing was trained) or a new --out")
        augment = build_augmentation(config.augmentation, config.training_image_size, config.mixup, config.cutmix)
        if not start_epoch:
            _write_previews(run, data.train, class_names, augment)
            run.write_record("copies", exact_copies(data))
        recorder = RunRecorder(run, config.early_stopping, config.total_epochs, keras_prints_epochs=verbose > 0)
        callbacks = [keras.callbacks.TensorBoard(str(run / "tensorboard"), write_graph=False, profile_batch=0), *callbacks]
        if start_epoch:
            model = load_keras_model(run.checkpoint_dir / run.state()["model"], compile=True)
            log.info("resuming %s after epoch %d of %d", run.path, start_epoch, config.total_epochs)
        else:
            model = spec.classifier
            if not entry.pretrained:
                compile_for_training(model, config, len(data.train), replicas)
        if entry.pretrained:
            if start_epoch < config.epochs:
                _train_head(run, config, spec, data, recorder, timings, replicas, verbose, progress, callbacks)
            if config.fine_tune_blocks:
                if start_epoch <= config.epochs:  # the head is trained; fine-tuning starts now
                    trainable = unfreeze_top_blocks(model, entry.block_pattern, config.fine_tune_blocks)
                    log.info("fine-tuning the top %s (%d trainable weights)", counted(config.fine_tune_blocks, "block"), trainable)
                    compile_for_training(model, config, len(data.train), replicas, fine_tuning=True)
                fitted = fine_tuning_model(model)  # the same weights, the frozen bottom folded: faster epochs
                if fitted is not model:
                    compile_like(fitted, model)
                with timings.timed("fine_tune"):
                    _fit(fitted, config, data, recorder, max(start_epoch, config.epochs), augment, replicas, verbose, callbacks,
                         classifier=model)
        else:
            if verbose:
                model.summary()
            with timings.timed("train"):
                _fit(model, config, data, recorder, start_epoch, augment, replicas, verbose, callbacks)
        if config.early_stopping:
            model = recorder.best_model()
    return finish(run, config, model, num_classes, timings, data.skipped, clock, data.validation)


def check_model_settings(config: TrainConfig):
    """The model's registry entry, once settings that only pretrained backbones take are checked."""
    entry = get_model_entry(config.model)
    if not entry.pretrained and (config.weights or config.fine_tune_blocks):
        raise ConfigError(f"{config.model} trains from scratch: --weights and --fine-tune-blocks are for pretrained backbones")
    if entry.pretrained and config.test_time_flip:  # its head trains and validates on cached embeddings, not images
        raise ConfigError(f"{config.model} is a pretrained backbone: --test-time-flip is for models trained from scratch")
    if config.trains_at_another_size and not entry.any_input_size:
        raise ConfigError(f"{config.model} takes one input size only: train image size must be its image size "
                          f"{config.image_size}. Received: train_image_size={config.training_image_size}")
    return entry


def build_classifier(config: TrainConfig, num_classes: int) -> ModelSpec:
    """The model to train: built for any input size when it trains at a size other than the one it is
    validated at. model.keras is always rebuilt at image_size (see _inference_copy)."""
    size = (None, None) if config.trains_at_another_size else config.image_size
    return _with_inference_settings(create_model(config.model, num_classes, size, config.weights or "imagenet"), config)


def _with_inference_settings(spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """The trained model and its model.keras twin are both wrapped, so set_weights sees one structure."""
    if config.test_time_flip:
        return dataclasses.replace(spec, classifier=with_test_time_flip(spec.classifier))
    return spec


def local_strategy(name: str) -> tf.distribute.Strategy:
    """The default (one device) strategy, or MirroredStrategy over every local GPU, else every logical CPU
    device (one, unless split with tf.config.set_logical_device_configuration, as tests do)."""
    if name != "mirrored":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    log.info("mirrored training on %d devices: %s", strategy.num_replicas_in_sync, ", ".join(d.name for d in devices))
    return strategy


def write_parallelism(run: RunFolder, config: TrainConfig, strategy: str, replicas: int) -> None:
    """parallel.json: how the run was spread, and what that made of the batch and the learning rate."""
    run.write_record("parallel", {
        "strategy": strategy,
        "replicas": replicas,
        "batch_size_per_replica": config.batch_size,
        "global_batch_size": config.batch_size * replicas,
        "lr_scaling": config.lr_scaling,
        "peak_learning_rate": config.learning_rate_for(config.learning_rate, replicas),
    })


def finish(run: RunFolder, config: TrainConfig, model: keras.Model, num_classes: int, timings: StageTimings,
           skipped: dict[str, str], clock: RunClock, validation: CachedRows | None = None) -> TrainResult:
    """What every way of training ends with: model.keras (float32, uncompiled), its calibration on the
    validation split (petal.runtime.calibration), timings, curves, diagnosis, report. `clock`: the run's wall
    time, saving and calibration included and earlier processes' before a --resume, recorded as `seconds`
    (what report.html and `petal train` say). `validation`: the split's rows when the caller has them
    already (else read from the decode cache)."""
    saved = _inference_copy(model, config, num_classes)
    with atomic.atomic_path(run.model_path) as tmp:
        saved.save(tmp)
    if validation is None:
        validation = decode_cache(config).load(run.split("validation"))
    logits = predict_logits(saved, validation, config.batch_size)
    predicted = logits.argmax(1)
    run.write_record("calibration", calibrate(logits, validation.labels).to_dict())
    run.write_record("validation", {"images": len(validation), "accuracy": float(np.mean(predicted == validation.labels)),
                                    "confusion": confusion_matrix(validation.labels, predicted, num_classes).tolist()})
    run.write_record("environment", {**environment(), "seconds": round(clock.seconds(), 1)})
    run.write_record("timings", timings.rounded())
    history = run.history()
    save_curves(history, run / "curves.png", title=f"{config.model} on {Path(config.data_dir).name}")
    diagnosis = diagnose(history)
    run.write_record("diagnosis", diagnosis)
    build_report(run.path)
    return TrainResult(run, history, diagnosis, skipped)


def _fit(model, config: TrainConfig, data: PreparedData, recorder: "RunRecorder", start_epoch: int, augment, replicas: int,
         verbose: int, extra_callbacks=(), classifier: keras.Model | None = None):
    """Train on images from `start_epoch` up to config.total_epochs, recording every epoch (the recorder
    runs before `extra_callbacks`, so they see a recorded epoch). `classifier`: what the callbacks see, save and
    stop when `model` is its fine-tuning copy (petal.training.models.backbones.fine_tuning_model)."""
    num_classes = len(data.split.train.class_names)
    batch_size = config.batch_size * replicas  # Keras splits each batch over the replicas
    train_ds = make_dataset(data.train, batch_size, num_classes, shuffle_seed=config.training_seed,
                            start_epoch=start_epoch, augment=augment, drop_remainder=replicas > 1)
    if replicas > 1:  # Keras 3 cannot evaluate a short last batch over replicas: validate outside the strategy
        validation, callbacks = None, [_Validation(data.validation, config.batch_size, num_classes), recorder, *extra_callbacks]
    else:
        validation, callbacks = make_dataset(data.validation, batch_size, num_classes), [recorder, *extra_callbacks]
    if classifier is not None and classifier is not model:
        callbacks = [_OnClassifier(callbacks, classifier)]
    model.fit(
        train_ds,
        validation_data=validation,
        epochs=config.total_epochs,
        initial_epoch=start_epoch,
        class_weight=_class_weight(config, data),
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles, by (seed, epoch)
        verbose=verbose,
    )


class _OnClassifier(keras.callbacks.CallbackList):
    """The run's callbacks while fine-tuning fits the classifier's folded copy: they see, checkpoint and may stop
    the classifier (whose trainable weights the copy shares), as in every other stage."""

    def __init__(self, callbacks, classifier: keras.Model):
        self.classifier = classifier
        self.fitted = None
        super().__init__(callbacks, model=classifier)

    def set_model(self, model):
        if model is self.classifier:
            super().set_model(model)
        else:  # Keras hands every callback the model it fits
            self.fitted = model

    def on_train_begin(self, logs=None):
        self.classifier.stop_training = False
        super().on_train_begin(logs)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self.fitted.stop_training |= self.classifier.stop_training

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.fitted.stop_training |= self.classifier.stop_training


def predict_logits(model: keras.Model, images: CachedRows, batch_size: int) -> np.ndarray:
    """(N, classes) float32 logits of every row of `images`, in order, in inference mode. Compiled
    (predict_on_batch): an eager call of a functional model holds every layer's output until it returns,
    2.2 GB more for MobileNetV2 at 224 px and batch 32."""
    batches = [np.asarray(model.predict_on_batch(images.gather(np.arange(start, min(start + batch_size, len(images)))).astype("float32")),
                          dtype=np.float32) for start in range(0, len(images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]), np.float32)


def validate(model: keras.Model, images: CachedRows, batch_size: int, num_classes: int) -> dict[str, float]:
    """val_loss and val_accuracy over every validation image, with the model's compiled loss, one replica
    (outside any strategy: variables are read, no collectives). The model runs as one tf.function, traced once
    per model: an eager call holds every layer's output until it returns (see predict_logits)."""
    loss = model.loss
    if getattr(model, "_petal_inference", None) is None:
        model._petal_inference = tf.function(lambda x: model(x, training=False))
    total = correct = seen = 0.0
    for x, y in make_dataset(images, batch_size, num_classes):
        logits = np.asarray(model._petal_inference(x), dtype=np.float32)
        total += float(np.sum(loss.call(y, logits)))
        correct += float(np.sum(np.argmax(logits, -1) == np.argmax(y, -1)))
        seen += len(logits)
    return {"val_loss": total / seen, "val_accuracy": correct / seen}


class _Validation(keras.callbacks.Callback):
    """Adds val_loss and val_accuracy to the epoch's logs, for the callbacks after it (the RunRecorder)."""

    def __init__(self, images: CachedRows, batch_size: int, num_classes: int):
        super().__init__()
        self.images, self.batch_size, self.num_classes = images, batch_size, num_classes

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(validate(self.model, self.images, self.batch_size, self.num_classes))


def _train_head(run: RunFolder, config: TrainConfig, spec: ModelSpec, data: PreparedData, recorder: "RunRecorder",
                timings: StageTimings, replicas: int, verbose: int, progress=None, callbacks=()) -> None:
    """Stage 1 of a pretrained backbone: the head learns from cached embeddings (the backbone is frozen),
    for config.epochs epochs. Seconds of work, so it is checkpointed once, at its end."""
    num_classes = len(data.split.train.class_names)
    cache = EmbeddingCache(config.cache_dir or default_cache_root(), config.model, spec.features, decode_cache(config).settings)
    with timings.timed("embeddings"):
        embedding = None if progress is None else lambda batches, total: progress(batches, total=total, desc="embedding", unit="batch")
        train_embeddings = cache.load(data.train, progress=embedding)
        val_embeddings = cache.load(data.validation, progress=embedding)
    with timings.timed("head"):
        compile_for_training(spec.head, config, len(data.train), replicas)
        epoch_seconds = EpochSeconds()
        fitted = spec.head.fit(
            make_dataset(train_embeddings, config.batch_size * replicas, num_classes, shuffle_seed=config.training_seed),
            validation_data=make_dataset(val_embeddings, config.batch_size * replicas, num_classes),
            epochs=config.epochs,
            class_weight=_class_weight(config, data),
            callbacks=[epoch_seconds, *callbacks],
            shuffle=False,
            verbose=verbose,
        )
    epochs = [{key: values[i] for key, values in fitted.history.items()} for i in range(config.epochs)]
    recorder.record_epochs(spec.classifier, epochs, epoch_seconds.seconds)




def _inference_copy(model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """The same architecture built in float32 and not compiled, holding the trained (float32) weights:
    what model.keras keeps. No optimizer state (a third of the tutorial's 48 MB), no 16-bit layers."""
    twin = _with_inference_settings(create_model(config.model, num_classes, config.image_size, weights=None), config).classifier
    twin.set_weights(model.get_weights())
    return twin


def _class_weight(config: TrainConfig, data: PreparedData) -> dict[int, float] | None:
    """Keras's class_weight for this run: inverse-frequency weights with --class-weight auto, else none."""
    if config.class_weight != "auto":
        return None
    return class_weights(data.train.labels, len(data.split.train.class_names))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: rows the true class, columns the predicted one."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def environment() -> dict:
    """What the report's header says about how the run was made."""
    import platform

    return {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "petal": petal.__version__, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "device": device()}


# Settings that change where files go, not what is trained: a resumed run may give other values.
RESULT_NEUTRAL_SETTINGS = ("cache_dir",)


def check_out(run: RunFolder, config: TrainConfig) -> None:
    """Refuse a run folder inside the data folder, before anything is made: its charts and samples would be read
    as photos of a class. Raises ConfigError."""
    if is_inside(run.path, config.data_dir):
        raise ConfigError(f"{run.path}: the run folder must be outside the data folder {config.data_dir} (its images would be "
                          f"read as photos)")


def plan_run(run: RunFolder, config: TrainConfig, resume: bool) -> tuple[Split, int]:
    """Resume: check the saved config, read the recorded split and the epochs done. Fresh start: check the
    folder is free and make the split. Writes nothing. A run killed (or out of disk space) before its first
    epoch was recorded is started again by --resume, whatever of its start it had written."""
    if resume:
        saved = run.config().to_dict()
        if not run.state()["epochs_done"]:  # nothing trained: the settings given may differ (a start that failed on them)
            log.info("%s: no epoch had been recorded; starting the run again", run.path)
            return make_split(config), 0
        given = config.to_dict()
        changed = [f"{k} (saved {v!r}, given {given[k]!r})" for k, v in saved.items() if given[k] != v and k not in RESULT_NEUTRAL_SETTINGS]
        if changed:
            raise RunFolderError(f"{run.path}: cannot resume with different settings: {'; '.join(changed)}. "
                                 f"Leave those options out to keep the run's own")
        split = Split(run.split("train"), run.split("validation"), "recorded", config.val_split, config.seed)
        done = run.state()["epochs_done"]
        if len(run.history_rows()) < done:
            raise RunFolderError(f"{run.history_path}: damaged: {len(run.history_rows())} epochs recorded, checkpoint/state.json "
                                 f"says {done}; train again into a new --out")
        return split, done
    if run.path.exists() and atomic.contents(run.path):
        raise RunFolderError(
            f"{run.path}: run folder already exists and is not empty; pass --resume to continue it or choose another --out"
        )
    return make_split(config), 0


def exact_copies(data: PreparedData) -> dict:
    """Files with the same contents (the decode cache's sha256 keys), found for free while training: in
    both sides of the split (validation accuracy is inflated by them) or under two classes (one label is wrong).
    Each list holds [path, path] pairs, at most 100."""
    names = data.split.train.class_names
    where: dict[str, list[tuple[str, str, str]]] = {}
    for side, rows in (("train", data.train), ("validation", data.validation)):
        for key, path, label in zip(rows.keys, rows.paths, rows.labels):
            where.setdefault(key, []).append((side, path, names[label]))
    across = [[a[1], b[1]] for places in where.values() for a in places for b in places if a[0] == "train" and b[0] == "validation"]
    classes = [[a[1], b[1]] for places in where.values() for i, a in enumerate(places) for b in places[i + 1:] if a[2] != b[2]]
    return {"across_split": across[:100], "across_split_count": len(across), "two_classes": classes[:100], "two_classes_count": len(classes)}


def _write_previews(run: RunFolder, images: CachedRows, class_names, augment) -> None:
    """samples.jpg: nine training images; augmentation.jpg: the first one through the augmentation nine times."""
    count = min(9, len(images))
    batch = images.gather(np.arange(count))
    save_image_grid(batch, [printable(class_names[label]) for label in images.labels[:count]], run / "samples.jpg")
    if augment is not None:
        first = np.repeat(batch[:1].astype("float32"), 9, axis=0)
        one_hot = np.eye(len(class_names), dtype="float32")[np.repeat(images.labels[:1], 9)]
        augmented, _ = augment(tf.constant(first), tf.constant(one_hot))
        save_image_grid(np.clip(np.asarray(augmented), 0, 255), [f"augmented {i + 1}" for i in range(9)], run / "augmentation.jpg")
