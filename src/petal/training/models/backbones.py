"""Pretrained ImageNet backbones from `keras.applications`, each under a small head, for transfer learning.

Every classifier takes 0..255 images like any petal model: the backbone's own preprocessing is a layer
inside it (or inside the Keras application), so training, evaluation, export and prediction cannot
disagree on it. Weights come the standard Keras way: "imagenet" makes Keras use
~/.keras/models/<file> (downloading it there when missing), a path uses that file. MobileNetV2 1.0, the
default model's backbone, also ships inside the package (petal/training/models/weights, provenance and licence
beside it): "imagenet" takes Keras's cached file when there is one, else the shipped copy, so the
default never needs a download. petal.registry lists them with their recipes. Training
(petal.training.loop) first fits the head on cached embeddings with the backbone frozen, then optionally
fine-tunes the top blocks; `block_pattern` tells which layers make up a block.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sys
from pathlib import Path

import keras
from keras import layers

from petal.errors import WeightsError
from petal.registry import ModelSpec

HEAD_DROPOUT = 0.2
BACKBONE_LAYER = "backbone"  # the Keras application inside every classifier, by this name

# Files shipped in petal/training/models/weights, by name, with the sha256 their README records.
SHIPPED_WEIGHTS = {
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5":
        "71e4c4ec4aa24c9c951b9265d6de42e1336dcf614c2214fa6a989208615e232c",
}
SHIPPED_WEIGHTS_DIR = Path(__file__).parent / "weights"


def keras_weights_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def shipped_weights(file_name: str) -> Path:
    """The package's copy of `file_name`, once its sha256 matches the recorded one.

    Raises:
        WeightsError: the file is missing from the installed package or its contents differ.
    """
    path = SHIPPED_WEIGHTS_DIR / file_name
    if not path.is_file():
        raise WeightsError(f"{path}: the shipped weights file is missing from this petal install; reinstall petal or pass --weights FILE")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHIPPED_WEIGHTS[file_name]:
        raise WeightsError(f"{path}: sha256 {digest} is not the shipped file's {SHIPPED_WEIGHTS[file_name]}; reinstall petal or pass --weights FILE")
    return path


def mobilenet_v2_weights_file(image_size: tuple[int, int], alpha: float = 1.0) -> str:
    """The file name Keras's MobileNetV2(weights="imagenet") looks for in ~/.keras/models at this input
    size (keras/src/applications/mobilenet_v2.py: sizes 96-224 have their own file, others take 224's)."""
    rows = image_size[0] if image_size[0] == image_size[1] and image_size[0] in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def resolve_weights(weights: str | None, keras_file: str, shipped_file: str) -> str | None:
    """The precedence for a backbone that ships its weights: a file the user gave (or None), then
    "imagenet" when Keras has its own file `keras_file` cached, then the shipped copy `shipped_file`."""
    if weights != "imagenet" or (keras_weights_dir() / keras_file).is_file():
        return weights
    return str(shipped_weights(shipped_file))


# Backbones whose ImageNet weights ship inside the package: the Keras file name for an input size, and the shipped file.
SHIPPED_FOR = {"MobileNetV2": (mobilenet_v2_weights_file, mobilenet_v2_weights_file((224, 224)))}
RESCALED_TO_MINUS_ONE_TO_ONE = ("MobileNet", "MobileNetV2")  # the others carry their own preprocessing layers


def build_classifier(num_classes: int, image_size: tuple[int, int], weights: str | None, application: str, **options) -> ModelSpec:
    """keras.applications.`application` without its top, frozen, under a dropout-and-dense head.

    Args:
        num_classes: width of the logits.
        image_size: (height, width) of the float32 0..255 input; (None, None) builds for any size.
        weights: "imagenet" (Keras's cached file, else a copy petal ships), a weights file, or None (random).
        application: a name in keras.applications, e.g. "MobileNetV2".
        options: for the application, e.g. alpha.

    Raises:
        WeightsError: the weights cannot be had or do not fit.
    """
    images = keras.Input((*image_size, 3), name="image")
    rescale = application in RESCALED_TO_MINUS_ONE_TO_ONE
    x = layers.Rescaling(1 / 127.5, offset=-1, name="preprocessing")(images) if rescale else images
    if application in SHIPPED_FOR:
        keras_file, shipped_file = SHIPPED_FOR[application]
        weights = resolve_weights(weights, keras_file(image_size), shipped_file)
    backbone = load_backbone(getattr(keras.applications, application), image_size, weights, **options)
    backbone.trainable = False
    embeddings = backbone(x)
    head = keras.Sequential(
        [keras.Input((embeddings.shape[-1],)), layers.Dropout(HEAD_DROPOUT), layers.Dense(num_classes, name="logits")],
        name="head",
    )
    classifier = keras.Model(images, head(embeddings), name="classifier")
    return ModelSpec(classifier, features=keras.Model(images, embeddings, name="features"), head=head)


def load_backbone(application, image_size: tuple[int, int], weights: str | None, **options) -> keras.Model:
    """The application without its top, average-pooled; a missing or unfitting weights file is one WeightsError."""
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise WeightsError(f"{weights}: no such weights file")
    keras_says = io.StringIO()  # Keras prints "Downloading data from ..." before a download that may fail
    try:
        with contextlib.redirect_stdout(keras_says):
            backbone = application(input_shape=(*image_size, 3), include_top=False, weights=weights, pooling="avg", **options)
    except Exception as exc:
        fetch = re.search(r"URL fetch failure on (\S+?): (.*)", str(exc))
        if weights == "imagenet" and fetch:
            url, reason = fetch.groups()
            file_name = url.rsplit("/", 1)[-1]
            raise WeightsError(
                f"pretrained weights {file_name} are not in {keras_weights_dir()} and cannot be downloaded "
                f"({reason.strip()}): put that file there (from {url}) or pass --weights FILE"
            ) from None
        if weights not in (None, "imagenet"):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{weights}: not weights of {application.__name__} without its top ({first_line})") from None
        raise
    sys.stdout.write(keras_says.getvalue())
    backbone.name = BACKBONE_LAYER  # renamed only now: EfficientNets derive their weights file name from `name`
    return backbone


def backbone_blocks(classifier: keras.Model, block_pattern: str) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped into blocks, input side first. Layers between two blocks (activations,
    the final 1x1 convolution) belong to the block before them; the stem belongs to none."""
    pattern = re.compile(block_pattern)
    blocks: dict[str, list] = {}
    current = None
    for layer in classifier.get_layer(BACKBONE_LAYER).layers:
        match = pattern.match(layer.name)
        if match:
            current = match["block"]
        if current is not None:
            blocks.setdefault(current, []).append(layer)
    return list(blocks.values())


def unfreeze_top_blocks(classifier: keras.Model, block_pattern: str, count: int) -> int:
    """Make the top `count` blocks trainable, batch norm excepted: a frozen BatchNormalization runs in
    inference mode, so its statistics are not pulled towards a small data set. Returns the number of
    trainable weights."""
    backbone = classifier.get_layer(BACKBONE_LAYER)
    backbone.trainable = True
    blocks = backbone_blocks(classifier, block_pattern)
    chosen = {id(layer) for block in blocks[len(blocks) - count:] for layer in block} if count else set()
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
    return len(classifier.trainable_weights)
