"""The one configuration object of a training run; it is saved as config.json in every run folder."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from petal.errors import ConfigError
from petal.image import DEFAULT_MAX_PIXELS, RESIZE_METHOD


@dataclass
class TrainConfig:
    data_dir: str
    model: str = "tutorial-augmented"
    epochs: int = 15
    batch_size: int = 32
    image_size: tuple[int, int] = (180, 180)
    val_split: float = 0.2
    seed: int = 123
    split_method: str = "keras"
    learning_rate: float = 0.001
    class_weight: str = "none"  # "auto": weight the loss by inverse class frequency
    deterministic: bool = False  # same seed and data -> the same history, at some cost in speed
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_dir: str | None = None  # None: $PETAL_CACHE_DIR or ~/.cache/petal
    resize_method: str = field(default=RESIZE_METHOD, init=False)  # recorded, not chosen: see petal.image

    def __post_init__(self):
        self.image_size = tuple(int(v) for v in self.image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ConfigError(f"image size must be two numbers (height width), each at least 8. Received: image_size={self.image_size}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1. Received: {name}={getattr(self, name)}")
        if self.class_weight not in ("none", "auto"):
            raise ConfigError(f"class weight must be 'none' or 'auto'. Received: class_weight={self.class_weight!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning rate must be positive. Received: learning_rate={self.learning_rate}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        init_values = {k: v for k, v in values.items() if k != "resize_method"}
        config = cls(**init_values)
        if values.get("resize_method", RESIZE_METHOD) != RESIZE_METHOD:
            raise ConfigError(
                f"this run was decoded with resize method {values['resize_method']!r}, this petal uses {RESIZE_METHOD!r}"
            )
        return config

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
