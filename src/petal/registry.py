"""The model registry: every model `petal train --model` accepts, with its recipe, as plain data.

Importing this module needs no Keras, so `petal models`, `TrainConfig.for_model` and the light install
can read names, descriptions and recipes; a model's Keras builder (petal.training.models) is imported
only when `create_model` builds it. A recipe holds the TrainConfig values a model was measured with
(docs/TRAINING.md, docs/BENCHMARKS.md); the user's own settings override them.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from petal.errors import ConfigError

if TYPE_CHECKING:
    import keras

DEFAULT_MODEL = "mobilenet-v2"

# petal-resnet, from scratch (src/petal/training/models/resnet.py; benchmarks/flowers.py).
RESNET_RECIPE = {
    "image_size": (144, 144),
    "train_image_size": (112, 112),
    "epochs": 120,
    "batch_size": 32,
    "optimizer": "adamw",
    "learning_rate": 0.002,
    "weight_decay": 0.05,
    "lr_schedule": "cosine",
    "warmup_epochs": 2,
    "label_smoothing": 0.1,
    "augmentation": "crop-flip-color",
    "precision": "auto",
    "test_time_flip": True,
}

# Pretrained backbones (benchmarks/transfer.py). `epochs` are the head's, on cached embeddings;
# augmentation serves the optional fine-tuning.
BACKBONE_RECIPE = {
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

# The default model's (benchmarks/default_recipe.py, docs/TRAINING.md): the head on cached embeddings,
# then the top blocks fine-tuned on augmented images with batch norm frozen. Batch 16: fine-tuning at 32
# kept 0.55 GB more for the backward pass (peak RSS 1.86 GB against 1.32); the first fine-tuning epoch warms
# its rate up from 0, which took the final accuracy from 0.936-0.940 to 0.952-0.954.
DEFAULT_RECIPE = {
    **BACKBONE_RECIPE,
    "batch_size": 16,
    "fine_tune_blocks": 8,
    "fine_tune_epochs": 5,
    "fine_tune_warmup_epochs": 1,
    "fine_tune_learning_rate": 3e-4,
}

RESCALED = "x / 255, inside the model"
MINUS_ONE_TO_ONE = "x / 127.5 - 1, inside the model"
KERAS_OWN = "the Keras application's own (Rescaling/Normalization layers), inside the model"


@dataclass(frozen=True)
class ModelSpec:
    """What a builder returns.

    `classifier` maps float32 images with values 0..255 to class logits; it is what gets saved,
    exported and served. Augmentation is not part of it: see `petal.training.augment`.
    """

    classifier: keras.Model
    # Pretrained backbones only: `classifier` is head(features(images)), the two sharing its layers.
    features: keras.Model | None = None  # images -> embeddings (preprocessing included)
    head: keras.Model | None = None  # embeddings -> logits


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    # builder(num_classes, image_size[, weights], **options) -> ModelSpec, or "module:function" naming one
    builder: Callable[..., ModelSpec] | str
    recipe: dict = field(default_factory=dict)  # TrainConfig values this model trains with unless told otherwise
    preprocessing: str = RESCALED  # what the model does to its 0..255 input; recorded in config.json
    block_pattern: str | None = None  # pretrained backbones: regex whose group 'block' names a fine-tunable block
    any_input_size: bool = False  # global pooling, no Flatten: can train at one size and be tested at another
    options: dict = field(default_factory=dict)  # keyword arguments for the builder

    @property
    def pretrained(self) -> bool:
        return self.block_pattern is not None

    def build(self, num_classes: int, image_size: tuple[int, int], weights: str | None) -> ModelSpec:
        builder = self.builder
        if isinstance(builder, str):
            module, _, name = builder.partition(":")
            builder = getattr(importlib.import_module(module), name)
        if self.pretrained:
            return builder(num_classes=num_classes, image_size=tuple(image_size), weights=weights, **self.options)
        return builder(num_classes=num_classes, image_size=tuple(image_size), **self.options)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, recipe: dict | None = None, **details):
    """Decorator: `@register_model("my-cnn", "...")` on `builder(num_classes, image_size) -> ModelSpec`.

    `recipe` holds the TrainConfig values (epochs, image size, optimizer, augmentation...) the model
    was measured with; the user's own settings override them. `details`: the other ModelEntry fields.
    Pretrained backbones (with a `block_pattern`) take a third argument, `weights` ("imagenet", a file,
    or None for random).

    Raises:
        ValueError: the name is taken.
    """

    def decorate(builder):
        _add(ModelEntry(name, description, builder, dict(recipe or {}), **details))
        return builder

    return decorate


def _add(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model name registered twice: {entry.name}")
    _REGISTRY[entry.name] = entry


def list_models(pattern: str = "*") -> list[ModelEntry]:
    """Entries whose name matches the shell-style `pattern`, by name."""
    return [entry for name, entry in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_model_entry(name: str) -> ModelEntry:
    """Raises ConfigError naming the valid names (and the closest) for an unknown name."""
    if name not in _REGISTRY:
        valid = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model; valid names: {', '.join(valid)}.{hint} Received: model={name!r}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, image_size: tuple[int, int], weights: str | None = "imagenet") -> ModelSpec:
    """A new Keras model (imports Keras). `weights` matters for pretrained backbones only: "imagenet"
    (Keras's cached file, or the copy petal ships), a local weights file, or None (random, e.g. to
    receive trained weights)."""
    return get_model_entry(name).build(num_classes, image_size, weights)


_TUTORIAL = "petal.training.models.tutorial"
_BACKBONES = "petal.training.models.backbones:build_classifier"
_add(ModelEntry("tutorial", "The tutorial's first CNN: 3x Conv2D+MaxPooling (16/32/64), Dense 128; no augmentation",
                f"{_TUTORIAL}:tutorial", recipe={"epochs": 10}))  # as the tutorial trains it
_add(ModelEntry("tutorial-augmented", "The tutorial's second CNN: flip/rotate(0.1)/zoom(0.1) augmentation and Dropout(0.2)",
                f"{_TUTORIAL}:tutorial_augmented", recipe={"augmentation": "tutorial"}))  # 15 epochs: TrainConfig's default
_add(ModelEntry("petal-resnet", "Small ResNet for CPUs, trained from scratch: 4 residual stages (32-128 wide), batch norm, "
                "global pooling; ~0.5 M params, <2 MB .tflite", "petal.training.models.resnet:petal_resnet",
                recipe=RESNET_RECIPE, preprocessing=MINUS_ONE_TO_ONE, any_input_size=True))
for _alpha in (0.25, 0.5, 0.75, 1.0):
    _add(ModelEntry(f"mobilenet-v1-{_alpha}", f"pretrained MobileNet v1, width {_alpha} (ImageNet)", _BACKBONES,
                    recipe=BACKBONE_RECIPE, preprocessing=MINUS_ONE_TO_ONE, block_pattern=r"^conv_(?:dw|pw|pad)_(?P<block>\d+)(?:_|$)",
                    options={"application": "MobileNet", "alpha": _alpha}))
_add(ModelEntry("mobilenet-v2", "pretrained MobileNetV2 1.0 (ImageNet, weights shipped with petal), head then top blocks fine-tuned",
                _BACKBONES, recipe=DEFAULT_RECIPE, preprocessing=MINUS_ONE_TO_ONE,
                block_pattern=r"^(?P<block>block_\d+|expanded_conv)_", options={"application": "MobileNetV2"}))
for _name, _application in (("mobilenet-v3-small", "MobileNetV3Small"), ("mobilenet-v3-large", "MobileNetV3Large")):
    _add(ModelEntry(_name, f"pretrained {_application} (ImageNet)", _BACKBONES, recipe=BACKBONE_RECIPE, preprocessing=KERAS_OWN,
                    block_pattern=r"^(?P<block>expanded_conv(?:_\d+)?)_", options={"application": _application}))
for _name, _application in (("efficientnet-b0", "EfficientNetB0"), ("efficientnetv2-b0", "EfficientNetV2B0")):
    _add(ModelEntry(_name, f"pretrained {_application} (ImageNet)", _BACKBONES, recipe=BACKBONE_RECIPE, preprocessing=KERAS_OWN,
                    block_pattern=r"^(?P<block>block\d+[a-z])_", options={"application": _application}))
