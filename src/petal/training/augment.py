"""Training-time augmentation, applied to whole batches in the tf.data pipeline.

Nothing here is part of a saved model: `model.keras` and every `.tflite` contain only the classifier,
so no random op can reach an export. Policies take float32 images with values 0..255 and one-hot
labels, and return the same; MixUp and CutMix also mix the labels.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import tensorflow as tf
from keras import layers

from petal.config import AUGMENTATIONS, CROPPING_AUGMENTATIONS
from petal.errors import ConfigError

Augment = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
# The pipeline is float32 whatever the run's mixed-precision policy: Keras layers built under mixed_bfloat16
# would otherwise cast images and labels to bfloat16 and MixUp's float32 weights would not multiply them.
PIPELINE_DTYPE = "float32"

def build_augmentation(policy: str, image_size: tuple[int, int], mixup: float = 0.0, cutmix: float = 0.0) -> Augment | None:
    """The batch augmentation `policy` (see AUGMENTATIONS), then MixUp (alpha `mixup`) and CutMix (alpha `cutmix`).
    Cropping policies output `image_size` whatever their input's size (see TrainConfig.train_image_size)."""
    if policy not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation; valid: {', '.join(AUGMENTATIONS)}. Received: augmentation={policy!r}")
    steps: list[Callable[[tf.Tensor], tf.Tensor]] = []
    if policy == "tutorial":
        tutorial = tutorial_layers()
        steps.append(lambda images: tutorial(images, training=True))
    if policy in CROPPING_AUGMENTATIONS:
        steps.append(lambda images: random_resized_crop(images, image_size))
        steps.append(random_horizontal_flip)
    if policy == "crop-flip-color":
        steps.append(color_jitter)
    if policy == "randaugment":
        randaugment = layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, dtype=PIPELINE_DTYPE)
        steps.append(lambda images: randaugment(images, training=True))
    mixers = []
    if mixup > 0:
        mixers.append(layers.MixUp(alpha=mixup, dtype=PIPELINE_DTYPE))
    if cutmix > 0:
        mixers.append(layers.CutMix(factor=cutmix, dtype=PIPELINE_DTYPE))
    if not steps and not mixers:
        return None

    def augment(images, labels):
        for step in steps:
            images = step(images)
        for mixer in mixers:
            mixed = mixer({"images": images, "labels": labels}, training=True)
            images, labels = mixed["images"], mixed["labels"]
        return images, labels

    return augment


def tutorial_layers() -> keras.Sequential:
    return keras.Sequential([layers.RandomFlip("horizontal", dtype=PIPELINE_DTYPE), layers.RandomRotation(0.1, dtype=PIPELINE_DTYPE),
                             layers.RandomZoom(0.1, dtype=PIPELINE_DTYPE)], name="augmentation")


def random_resized_crop(images: tf.Tensor, size: tuple[int, int], area=(0.25, 1.0), aspect=(3 / 4, 4 / 3)) -> tf.Tensor:
    """Inception-style crop: a random box of `area` of the image and `aspect` ratio, resized to `size`."""
    n = tf.shape(images)[0]
    scale = tf.random.uniform([n], *area)
    ratio = tf.exp(tf.random.uniform([n], math.log(aspect[0]), math.log(aspect[1])))
    height = tf.minimum(tf.sqrt(scale / ratio), 1.0)
    width = tf.minimum(tf.sqrt(scale * ratio), 1.0)
    top = tf.random.uniform([n]) * (1.0 - height)
    left = tf.random.uniform([n]) * (1.0 - width)
    boxes = tf.stack([top, left, top + height, left + width], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(n), size)


def random_horizontal_flip(images: tf.Tensor) -> tf.Tensor:
    flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def color_jitter(images: tf.Tensor, strength: float = 0.3) -> tf.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - strength, 1 + strength]."""
    n = tf.shape(images)[0]

    def factor():
        return tf.random.uniform([n, 1, 1, 1], 1.0 - strength, 1.0 + strength)

    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * factor() + mean
    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = (images - gray) * factor() + gray
    return tf.clip_by_value(images * factor(), 0.0, 255.0)
