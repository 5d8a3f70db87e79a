"""Data-parallel training over several workers: Ray Train starts them (on a local cluster, or on the one
at --address) and sets up tf.distribute.MultiWorkerMirroredStrategy.

Keras 3's `model.fit` fails under that strategy (keras-team/keras#20585), so each step here is written
with `strategy.run` and a GradientTape. Nothing else is: the model comes from the registry, loss,
optimizer (schedule, scaling rule) and metric from `train.compile_for_training`, augmentation from
`petal.training.augment`, the input pipeline from `petal.training.pipeline`, exactly as in single-process training.
Each worker decodes and reads only its shard of the training files (every worker-th file), takes
batch_size images per step (the global batch is batch_size x workers), and all take the same number
of steps. Only the chief (rank 0) writes checkpoints and history into the run folder, through the same
RunRecorder, so export, evaluate, predict and --resume see an ordinary run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from petal import atomic
from petal.config import TrainConfig
from petal.errors import ConfigError, PetalError
from petal.run_folder import RunFolder, load_keras_model, read_json

log = logging.getLogger(__name__)


def train_on_ray(config: TrainConfig, out_dir: str | Path, *, address: str | None = None, resume: bool = False,
                 dashboard: bool = False):
    """Train `config` (strategy "multi-worker", `workers` workers) into the run folder `out_dir`."""

    from petal.scale.cluster import check_workers, ray_cluster
    from petal.training import loop as single
    from petal.training.checkpoints import RunClock, RunRecorder, StageTimings

    if config.strategy != "multi-worker":
        raise ConfigError(f"train_on_ray needs strategy 'multi-worker'. Received: strategy={config.strategy!r}")
    entry = single.check_model_settings(config)
    if entry.pretrained:
        raise ConfigError(f"{config.model}: pretrained backbones train in one process (their head takes seconds); drop --workers")
    config = dataclasses.replace(config, preprocessing=entry.preprocessing)
    run = RunFolder(out_dir)
    single.check_out(run, config)
    with atomic.held(run.path, "train --workers"):
        split, start_epoch = single.plan_run(run, config, resume)
        if resume and run.finished():
            return single.finished_run(run)
        with RunClock(run) as clock:
            started = time.perf_counter()
            log.info("%s ...", f"joining the Ray cluster at {address}" if address else "starting a local Ray cluster on 127.0.0.1")
            with ray_cluster(address, dashboard=dashboard) as ray:
                check_workers(ray, config.workers)
                log.info("Ray ready in %.0f s; starting %d training workers: each loads TensorFlow and decodes its share of the "
                         "images before the first epoch", time.perf_counter() - started, config.workers)
                if not start_epoch:
                    run.write_start(config, split)
                single.write_parallelism(run, config, "multi-worker", config.workers)
                timings = StageTimings(run)
                if start_epoch >= config.total_epochs:
                    log.info("%s: all %d epochs are done", run.path, config.total_epochs)
                else:
                    with timings.timed("train"):  # the workers' start, decode and epochs
                        _fit_on_workers(ray, run, config, start_epoch)
            skipped = _skipped_by_workers(run)
            single.report_skipped(run, skipped)
            shutil.rmtree(_ray_dir(run), ignore_errors=True)  # Ray Train's own records and the workers' scratch: not the run's
            recorder = RunRecorder(run)
            if config.early_stopping:
                model = recorder.best_model()
            else:
                model = load_keras_model(run.checkpoint_dir / run.state()["model"])
            num_classes = len(split.train.class_names)
            return single.finish(run, config, model, num_classes, timings, skipped=skipped, clock=clock)


def _skipped_by_workers(run: RunFolder) -> dict[str, str]:
    """The files each worker could not decode (path -> reason), from the lists they leave in RUN/.ray-train."""
    skipped: dict[str, str] = {}
    for path in sorted(_ray_dir(run).glob("skipped-rank-*.json")):
        skipped.update(read_json(path))
    return skipped


def _ray_dir(run: RunFolder) -> Path:
    path = run.path.resolve() / ".ray-train"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fit_on_workers(ray, run: RunFolder, config: TrainConfig, start_epoch: int) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from petal.scale.cluster import ray_error_line

    trainer = TensorflowTrainer(
        _worker_loop,
        train_loop_config={"config": config.to_dict(), "run": str(run.path.resolve()), "start_epoch": start_epoch},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(_ray_dir(run)), name="train"),
    )
    watcher = _HistoryPrinter(run, config.total_epochs)
    watcher.start()
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except PetalError:
        raise
    except Exception as exc:  # a worker's error; the run folder resumes from its last checkpoint
        raise PetalError(f"a training worker failed: {ray_error_line(exc)} (continue with --resume)") from None
    finally:
        watcher.stop()


def _worker_loop(settings: dict) -> None:
    """One Ray Train worker: its shard, its replica of the model, the shared step; the chief records."""
    import keras
    import ray.train
    import tensorflow as tf

    from petal.data.index import ImageFolder
    from petal.training import loop as single
    from petal.training.augment import build_augmentation
    from petal.training.checkpoints import RunRecorder
    from petal.training.optimization import compile_for_training, dtype_policy
    from petal.training.pipeline import make_dataset
    from petal.training.precision import resolve_precision

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = TrainConfig.from_dict(settings["config"])
    run = RunFolder(settings["run"])
    start_epoch = settings["start_epoch"]
    chief = rank == 0

    train_files = run.split("train")
    shard = ImageFolder(train_files.root, train_files.class_names, train_files.paths[rank::world], train_files.labels[rank::world])
    cache = single.decode_cache(config)
    images = cache.load(shard)
    validation = cache.load(run.split("validation")) if chief else None
    failures = {**images.failures, **(validation.failures if chief else {})}
    atomic.write_json(_ray_dir(run) / f"skipped-rank-{rank}.json", failures)  # the driver names them once training ends
    num_classes = len(train_files.class_names)
    steps = max(1, len(train_files) // world // config.batch_size)  # the same for every worker
    global_batch = config.batch_size * world

    keras.utils.set_random_seed(config.training_seed + start_epoch)  # the same initial weights everywhere
    # Saving reads variables that MultiWorkerMirroredStrategy synchronises with collective operations, so
    # every worker saves, in step: the chief into the run folder, the others into a scratch
    # folder (the pattern of TensorFlow's multi-worker guide), under RUN/.ray-train, which the driver removes.
    scratch = None if chief else tempfile.TemporaryDirectory(prefix=f"scratch-rank-{rank}-", dir=_ray_dir(run))
    with dtype_policy(resolve_precision(config.precision)), strategy.scope():
        resumed_from = run.state()["model"] if start_epoch else None
        recorder = RunRecorder(run, config.early_stopping) if chief else None
        if start_epoch:
            model = load_keras_model(run.checkpoint_dir / resumed_from, compile=True)
        else:
            model = single.build_classifier(config, num_classes).classifier
            compile_for_training(model, config, len(train_files), world, steps_per_epoch=steps)
        optimizer, loss = model.optimizer, model.loss

        augment = build_augmentation(config.augmentation, config.training_image_size, config.mixup, config.cutmix)
        own = make_dataset(images, config.batch_size, num_classes, shuffle_seed=config.training_seed + 7919 * rank,
                           start_epoch=start_epoch, augment=augment).repeat()
        batches = iter(strategy.distribute_datasets_from_function(lambda _: own))

        @tf.function
        def train_step(iterator):
            def replica_step(x, y):
                with tf.GradientTape() as tape:
                    logits = tf.cast(model(x, training=True), tf.float32)
                    total = tf.nn.compute_average_loss(loss.call(y, logits), global_batch_size=global_batch)
                    if model.losses:
                        total += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                gradients = tape.gradient(total, model.trainable_variables)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))
                correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(y, -1)), tf.float32))
                return total, correct, tf.cast(tf.shape(y)[0], tf.float32)

            values = strategy.run(replica_step, args=next(iterator))
            return [strategy.reduce("SUM", v, axis=None) for v in values]

        for epoch in range(start_epoch, config.total_epochs):
            started = time.perf_counter()
            loss_sum = correct = seen = 0.0
            for _ in range(steps):
                step_loss, step_correct, step_seen = train_step(batches)
                loss_sum, correct, seen = loss_sum + float(step_loss), correct + float(step_correct), seen + float(step_seen)
            logs = {"loss": loss_sum / steps, "accuracy": correct / seen}
            if chief:  # validation reads variables without collectives: the chief alone validates and records
                logs.update(single.validate(model, validation, config.batch_size, num_classes))
                recorder.record_epochs(model, [logs], [time.perf_counter() - started], first_epoch=epoch)
            else:  # the same save, in step, into the scratch folder: no history there, so nothing to validate
                RunFolder(scratch.name).save_checkpoint(model, "epoch.keras")
            ray.train.report({"epoch": epoch + 1, **logs})
    if scratch is not None:
        scratch.cleanup()


class _HistoryPrinter(threading.Thread):
    """Prints each epoch the chief adds to history.csv: the workers' own output stays out of the way."""

    def __init__(self, folder: RunFolder, epochs: int):
        super().__init__(daemon=True)
        self.folder, self.epochs = folder, epochs
        self.done = threading.Event()
        self.shown = len(folder.history().get("epoch", [])) if folder.history_path.exists() else 0

    def run_once(self) -> None:
        history = self.folder.history() if self.folder.history_path.exists() else {}
        for i in range(self.shown, len(history.get("epoch", []))):
            print(f"epoch {int(history['epoch'][i])}/{self.epochs}: accuracy {history['accuracy'][i]:.4f}, "
                  f"val_accuracy {history['val_accuracy'][i]:.4f} ({history['seconds'][i]:.0f} s)", file=sys.stderr, flush=True)
            self.shown = i + 1

    def run(self) -> None:  # noqa: D102 - threading.Thread's entry point
        while not self.done.wait(1.0):
            self.run_once()
        self.run_once()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
