"""Pretrained ImageNet backbones from `keras.applications`, each under a small head, for transfer learning.

Every classifier takes 0..255 images like any petal model: the backbone's own preprocessing is a layer
inside it (or inside the Keras application), so training, evaluation, export and prediction cannot
disagree on it. Weights come the standard Keras way: "imagenet" makes Keras use
~/.keras/models/<file> (downloading it there when missing), a path uses that file. MobileNetV2 1.0, the
default model's backbone, also ships inside the package (petal/models/weights, provenance and licence
beside it): "imagenet" takes Keras's cached file when there is one, else the shipped copy, so the
default never needs a download. Training
(petal.training) first fits the head on cached embeddings with the backbone frozen, then optionally
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
from petal.models._registry import ModelSpec, register_model

HEAD_DROPOUT = 0.2
BACKBONE_LAYER = "backbone"  # the Keras application inside every classifier, by this name

# The recipe these backbones were measured with (docs/BENCHMARKS.md, benchmarks/transfer.py). `epochs`
# are the head's, on cached embeddings; augmentation serves the optional fine-tuning.
RECIPE = {
    "image_size": (224, 224),
    "epochs": 30,
    "batch_size": 32,
    "optimizer": "adam",
    "learning_rate": 0.003,
    "lr_schedule": "cosine",
    "label_smoothing": 0.1,
    "augmentation": "crop-flip",
    "precision": "float32",
}

# The default model's recipe (docs/TRAINING.md, benchmarks/default_recipe.py): the head on cached
# embeddings, then the top blocks fine-tuned on augmented images with batch norm frozen.
DEFAULT_RECIPE = {
    **RECIPE,
    "fine_tune_blocks": 8,
    "fine_tune_epochs": 5,
    "fine_tune_learning_rate": 3e-4,
}

MINUS_ONE_TO_ONE = "x / 127.5 - 1, inside the model"
KERAS_OWN = "the Keras application's own (Rescaling/Normalization layers), inside the model"


# Files shipped in petal/models/weights, by name, with the sha256 their README records.
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


def _backbone_builder(application, rescale: bool, shipped_file: str | None = None, keras_file=None, **options):
    def build(num_classes: int, image_size: tuple[int, int], weights: str | None) -> ModelSpec:
        images = keras.Input((*image_size, 3), name="image")
        x = layers.Rescaling(1 / 127.5, offset=-1, name="preprocessing")(images) if rescale else images
        if shipped_file:
            weights = resolve_weights(weights, keras_file(image_size), shipped_file)
        backbone = load_backbone(application, image_size, weights, **options)
        backbone.trainable = False
        embeddings = backbone(x)
        head = keras.Sequential(
            [keras.Input((embeddings.shape[-1],)), layers.Dropout(HEAD_DROPOUT), layers.Dense(num_classes, name="logits")],
            name="head",
        )
        classifier = keras.Model(images, head(embeddings), name="classifier")
        return ModelSpec(classifier, features=keras.Model(images, embeddings, name="features"), head=head)

    return build


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


def _register(name: str, description: str, application, rescale: bool, block_pattern: str, recipe: dict = RECIPE,
              shipped_file: str | None = None, keras_file=None, **options):
    register_model(
        name,
        description,
        recipe=recipe,
        preprocessing=MINUS_ONE_TO_ONE if rescale else KERAS_OWN,
        block_pattern=block_pattern,
    )(_backbone_builder(application, rescale, shipped_file, keras_file, **options))


for _alpha in ("0.25", "0.5", "0.75", "1.0"):
    _register(
        f"mobilenet-v1-{_alpha}",
        f"pretrained MobileNet v1, width {_alpha} (ImageNet)",
        keras.applications.MobileNet,
        rescale=True,
        block_pattern=r"^conv_(?:dw|pw|pad)_(?P<block>\d+)(?:_|$)",
        alpha=float(_alpha),
    )
_register("mobilenet-v2", "pretrained MobileNetV2 1.0 (ImageNet, weights shipped with petal), fine-tuned: the default",
          keras.applications.MobileNetV2, rescale=True, block_pattern=r"^(?P<block>block_\d+|expanded_conv)_",
          recipe=DEFAULT_RECIPE, shipped_file=mobilenet_v2_weights_file((224, 224)), keras_file=mobilenet_v2_weights_file)
_register("mobilenet-v3-small", "pretrained MobileNetV3Small (ImageNet)", keras.applications.MobileNetV3Small,
          rescale=False, block_pattern=r"^(?P<block>expanded_conv(?:_\d+)?)_")
_register("mobilenet-v3-large", "pretrained MobileNetV3Large (ImageNet)", keras.applications.MobileNetV3Large,
          rescale=False, block_pattern=r"^(?P<block>expanded_conv(?:_\d+)?)_")
_register("efficientnet-b0", "pretrained EfficientNetB0 (ImageNet)",
          keras.applications.EfficientNetB0, rescale=False, block_pattern=r"^(?P<block>block\d+[a-z])_")
_register("efficientnetv2-b0", "pretrained EfficientNetV2B0 (ImageNet)", keras.applications.EfficientNetV2B0,
          rescale=False, block_pattern=r"^(?P<block>block\d+[a-z])_")


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
