"""`petal-resnet`: a small residual network designed for training from scratch on a CPU.

Measured, not assumed (docs/BENCHMARKS.md): plain 3x3 convolutions train several times faster per
image on a 2-core CPU than depthwise ones of fewer FLOPs, so the blocks are ResNet basic blocks.
Every stage halves the resolution right away, so no convolution runs at full input size after the
stem (a 4x4 stride-4 patch stem, as in ConvNeXt, made epochs 1.4x faster still but cost 1.5-2 points
of final accuracy). Batch norm everywhere (momentum 0.9, because small data sets give few steps per
epoch) and global average pooling instead of the tutorial's 4-million-weight dense layer keep it at
about half a million parameters: a float32 `.tflite` under 2 MB.
"""

from __future__ import annotations

import keras
from keras import layers

from petal.registry import ModelSpec

WIDTHS = (32, 64, 96, 128)
STEM = (3, 2)  # kernel, stride
STRIDES = (2, 2, 2, 2)  # after the stem's 2: the last feature map is 1/32 of the input, as in ResNet
BN_MOMENTUM = 0.9


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False)
    h = _conv_bn(x, filters, 3, stride, f"{name}_a")
    h = _conv_bn(h, filters, 3, 1, f"{name}_b", relu=False)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, h]))


def petal_resnet(num_classes: int, image_size: tuple[int, int]) -> ModelSpec:
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    x = _conv_bn(x, WIDTHS[0], *STEM, "stem")
    for stage, (width, stride) in enumerate(zip(WIDTHS, STRIDES), start=1):
        x = _basic_block(x, width, stride, f"stage{stage}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 logits under mixed precision
    return ModelSpec(keras.Model(inputs, outputs, name="petal_resnet"))
