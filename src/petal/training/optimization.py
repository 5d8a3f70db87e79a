"""The one definition of how petal models learn: loss, optimizer, learning-rate schedule, class weights and
the dtype policy, used by every path (one device, mirrored, and the multi-worker custom step, which uses
model.loss and model.optimizer)."""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from petal.config import TrainConfig


def compile_for_training(model: keras.Model, config: TrainConfig, train_images: int, replicas: int = 1, *,
                         fine_tuning: bool = False, steps_per_epoch: int | None = None) -> None:
    """The one definition of loss, optimizer (rate, schedule, scaling rule) and metrics, used by every
    path: one device, mirrored, multi-worker (whose custom step uses model.loss and model.optimizer)."""
    if fine_tuning:
        base, epochs, warmup = config.fine_tune_learning_rate, config.fine_tune_epochs, config.fine_tune_warmup_epochs
    else:
        base, epochs, warmup = config.learning_rate, config.epochs, config.warmup_epochs
    steps_per_epoch = steps_per_epoch or -(-train_images // (config.batch_size * replicas))
    rate = learning_rate(config.lr_schedule, config.learning_rate_for(base, replicas), epochs, warmup, steps_per_epoch)
    optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay) if config.optimizer == "adamw" else keras.optimizers.Adam(rate)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=_metrics(),
    )


def compile_like(model: keras.Model, compiled: keras.Model) -> None:
    """Compile `model` with the optimizer (and so its state), loss and metrics of `compiled`, whose trainable
    weights it shares: fine-tuning fits one model and checkpoints the other (petal.training.loop)."""
    model.compile(optimizer=compiled.optimizer, loss=compiled.loss, metrics=_metrics())


def _metrics() -> list[keras.metrics.Metric]:
    return [keras.metrics.CategoricalAccuracy(name="accuracy")]


def learning_rate(schedule: str, peak_rate: float, epochs: int, warmup_epochs: int,
                  steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or a schedule: linear warm-up, then cosine decay to 0 (or constant)."""
    warmup = warmup_epochs * steps_per_epoch
    if schedule == "constant" and not warmup:
        return peak_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak_rate,
        decay_steps=max(1, (epochs - warmup_epochs) * steps_per_epoch),
        alpha=0.0 if schedule == "cosine" else 1.0,  # alpha 1: stays at the peak (constant)
        warmup_target=peak_rate if warmup else None,
        warmup_steps=warmup,
    )


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, 1.0 on average over the images: n / (classes * count)."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Keras's dtype policy is global: set it for this run only."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
