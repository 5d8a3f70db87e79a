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

from petal.errors import ConfigError, WeightsError
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
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "input_shape" in first_line:  # Keras's check of the input size, before any weights are read
            raise ConfigError(f"image size {image_size[0]}x{image_size[1]} does not fit {application.__name__} ({first_line})") from None
        fetch = re.search(r"URL fetch failure on (\S+?): (.*)", str(exc))
        if weights == "imagenet" and fetch:
            url, reason = fetch.groups()
            file_name = url.rsplit("/", 1)[-1]
            raise WeightsError(
                f"pretrained weights {file_name} are not in {keras_weights_dir()} and cannot be downloaded "
                f"({reason.strip()}): put that file there (from {url}) or pass --weights FILE"
            ) from None
        if weights not in (None, "imagenet"):
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


def top_blocks(classifier: keras.Model, block_pattern: str, count: int) -> list[list[keras.layers.Layer]]:
    """The top `count` blocks of the classifier's backbone (backbone_blocks). Raises ConfigError when it has fewer."""
    blocks = backbone_blocks(classifier, block_pattern)
    if not 0 <= count <= len(blocks):
        raise ConfigError(f"--fine-tune-blocks {count}: this backbone has {len(blocks)} blocks")
    return blocks[len(blocks) - count:] if count else []


def unfreeze_top_blocks(classifier: keras.Model, block_pattern: str, count: int) -> int:
    """Make the top `count` blocks trainable, batch norm excepted: a frozen BatchNormalization runs in
    inference mode, so its statistics are not pulled towards a small data set. Returns the number of
    trainable weights."""
    backbone = classifier.get_layer(BACKBONE_LAYER)
    chosen = {id(layer) for block in top_blocks(classifier, block_pattern, count) for layer in block}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
    return len(classifier.trainable_weights)


class _Folded(layers.Layer):
    """Stands where a BatchNormalization was folded into the convolution before it (fold_batch_norm)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def _folds(model: keras.Model) -> dict[str, layers.BatchNormalization]:
    """{convolution name: the BatchNormalization that alone reads its output}, for every such pair of `model`."""
    found = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        producer = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if (isinstance(producer, (layers.Conv2D, layers.DepthwiseConv2D)) and producer.get_config()["activation"] == "linear"
                and len(producer._outbound_nodes) == 1 and len(layer._inbound_nodes) == 1):
            found[producer.name] = layer
    return found


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An inference-only copy of the functional `model` (and the functional models inside it) in which every
    Conv2D or DepthwiseConv2D followed only by a BatchNormalization carries that normalisation in its kernel
    and bias, as LiteRT's converter does. Equal outputs to float rounding in inference mode (training=False);
    never train the copy.

    Why: Keras 3 runs batch norm as separate passes over each activation; on a CPU they cost MobileNetV2 at 224 px
    about a third of its inference time (docs/BENCHMARKS.md), work the convolution can do in its bias.
    The fold: y = gamma (conv(x) - mean) / sqrt(var + eps) + beta = conv'(x) + beta', with the kernel's output
    channels scaled by s = gamma / sqrt(var + eps) and beta' = beta - mean s.
    """
    folds = _folds(model)
    folded_norms = {norm.name for norm in folds.values()}

    def clone(layer):
        if isinstance(layer, keras.Model):
            return fold_batch_norm(layer)
        if layer.name in folded_norms:
            return _Folded(name=layer.name)
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if isinstance(layer, keras.Model) or layer.name in folded_norms or not layer.weights:
            continue
        target = folded.get_layer(layer.name)
        if layer.name not in folds:
            target.set_weights(layer.get_weights())
            continue
        norm = folds[layer.name]
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else 0.0
        mean, variance = (keras.ops.convert_to_numpy(w) for w in (norm.moving_mean, norm.moving_variance))
        gamma = keras.ops.convert_to_numpy(norm.gamma) if norm.scale else 1.0
        beta = keras.ops.convert_to_numpy(norm.beta) if norm.center else 0.0
        scale = gamma / (variance + norm.epsilon) ** 0.5
        # Conv2D kernels end in output channels; a depthwise kernel's outputs are (input channel, multiplier).
        kernel = kernel * scale.reshape(kernel.shape[-2:] if isinstance(layer, layers.DepthwiseConv2D) else kernel.shape[-1:])
        target.set_weights([kernel, (bias - mean) * scale + beta])
    return folded


def fine_tuning_model(classifier: keras.Model) -> keras.Model:
    """What fine-tuning fits: `classifier`'s own layers from the backbone's first trainable layer on (so
    training changes `classifier`'s weights), after a folded copy (fold_batch_norm) of the frozen layers
    below it. The bottom of MobileNetV2 at 224 px is most of an image's compute, and frozen it only runs
    in inference mode. Returns `classifier` itself when it is not a chain of layers around the backbone or
    the frozen layers do not meet the trainable ones at a single tensor."""
    backbone = classifier.get_layer(BACKBONE_LAYER)
    first = next((layer for layer in backbone.layers if layer.trainable_weights), None)
    chain = [layer for layer in classifier.layers if not isinstance(layer, layers.InputLayer)]
    if first is None or any(len(layer._inbound_nodes) != 1 or len(layer._inbound_nodes[0].input_tensors) != 1 for layer in chain):
        return classifier
    try:
        bottom = fold_batch_norm(keras.Model(backbone.input, first.input))
        top = keras.Model(first.input, backbone.output)
    except ValueError:  # a trainable layer also reads a frozen tensor other than first.input
        return classifier
    inputs = keras.Input(classifier.input.shape[1:], dtype=classifier.input.dtype)
    outputs = inputs
    for layer in chain:
        outputs = top(bottom(outputs)) if layer is backbone else layer(outputs)
    return keras.Model(inputs, outputs, name=f"{classifier.name}_fine_tuning")

