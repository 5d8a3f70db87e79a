"""Test-time flips inside the model: at inference it averages its logits over each image and its mirror image.

Inside the model rather than in petal's prediction code, so `model.keras`, every `.tflite`, validation during
training and the export parity gate all see the same function, and a phone running the `.tflite` gets the
same accuracy as the run folder reports. In training both layers pass their input through: the training
augmentation already flips. Only for classes that look the same mirrored (petal's cropping augmentations
assume that too).
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="petal")
class AddMirrorImages(layers.Layer):
    """Inference: the batch, then the same images flipped left to right (twice the batch). Training: the batch."""

    def call(self, images, training=None):
        if training:
            return images
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)


@keras.saving.register_keras_serializable(package="petal")
class MeanOverMirrorImages(layers.Layer):
    """Inference: the mean of each image's logits and its mirror image's (half the batch). Training: the logits."""

    def call(self, logits, training=None):
        if training:
            return logits
        pairs = ops.reshape(logits, (2, -1, logits.shape[-1]))
        return ops.mean(pairs, axis=0)


def with_test_time_flip(classifier: keras.Model) -> keras.Model:
    """`classifier` inside a model that averages it over mirror images at inference; same weights, same input."""
    inputs = keras.Input(shape=classifier.input_shape[1:], name="image")
    images = AddMirrorImages(dtype="float32", name="add_mirror_images")(inputs)
    logits = MeanOverMirrorImages(dtype="float32", name="mean_over_mirror_images")(classifier(images))
    return keras.Model(inputs, logits, name=f"{classifier.name}_test_time_flip")
