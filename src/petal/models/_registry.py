"""The model registry: builders registered by name, listed by pattern, created by name."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from petal.errors import ConfigError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class ModelSpec:
    """What a registry builder returns.

    `classifier` maps float32 images with values 0..255 to class logits; it is what gets saved,
    exported and served. Augmentation is not part of it: see `petal.augment`.
    """

    classifier: keras.Model
    # Pretrained backbones only: `classifier` is head(features(images)), the two sharing its layers.
    features: keras.Model | None = None  # images -> embeddings (preprocessing included)
    head: keras.Model | None = None  # embeddings -> logits


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    builder: Callable[..., ModelSpec]
    recipe: dict = field(default_factory=dict)  # TrainConfig values this model trains with unless told otherwise
    preprocessing: str = "x / 255, inside the model"  # what the model does to its 0..255 input; recorded in config.json
    block_pattern: str | None = None  # pretrained backbones: regex whose group 'block' names a fine-tunable block
    any_input_size: bool = False  # global pooling, no Flatten: can train at one size and be tested at another

    @property
    def pretrained(self) -> bool:
        return self.block_pattern is not None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, recipe: dict | None = None, **details):
    """Decorator: `@register_model("tutorial", "...")` on `builder(num_classes, image_size) -> ModelSpec`.

    `recipe` holds the TrainConfig values (epochs, image size, optimizer, augmentation...) the model
    was measured with; the user's own settings override them. `details`: the other ModelEntry fields.
    Pretrained backbones take a third argument, `weights` ("imagenet", a file, or None for random).
    """

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model name registered twice: {name}")
        _REGISTRY[name] = ModelEntry(name, description, builder, dict(recipe or {}), **details)
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[ModelEntry]:
    return [entry for name, entry in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        valid = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model; valid names: {', '.join(valid)}.{hint} Received: model={name!r}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, image_size: tuple[int, int], weights: str | None = "imagenet") -> ModelSpec:
    """`weights` matters for pretrained backbones only: "imagenet" (Keras downloads and caches the file),
    a local weights file, or None (random, e.g. to receive trained weights)."""
    entry = get_model_entry(name)
    if entry.pretrained:
        return entry.builder(num_classes=num_classes, image_size=tuple(image_size), weights=weights)
    return entry.builder(num_classes=num_classes, image_size=tuple(image_size))
