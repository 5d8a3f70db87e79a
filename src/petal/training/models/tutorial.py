"""The two models of TensorFlow's image-classification tutorial, layer for layer.

`tutorial` has 3,989,285 parameters at 180x180x3 with 5 classes, as printed in the tutorial.
`tutorial-augmented` adds the tutorial's RandomFlip/RandomRotation/RandomZoom and Dropout(0.2).
Both take float images in 0..255; the first layer rescales them to 0..1, as in the tutorial.
"""

from __future__ import annotations

import keras
from keras import layers

from petal.registry import ModelSpec


def _tutorial_cnn(num_classes: int, image_size: tuple[int, int], dropout: float | None, name: str) -> keras.Model:
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def tutorial(num_classes: int, image_size: tuple[int, int]) -> ModelSpec:
    return ModelSpec(_tutorial_cnn(num_classes, image_size, dropout=None, name="tutorial"))


def tutorial_augmented(num_classes: int, image_size: tuple[int, int]) -> ModelSpec:
    return ModelSpec(_tutorial_cnn(num_classes, image_size, dropout=0.2, name="tutorial_augmented"))
