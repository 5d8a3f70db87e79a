"""The one configuration object of a training run; it is saved as config.json in every run folder."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from petal.data.decode import DEFAULT_MAX_PIXELS, MAX_BATCH_BYTES, RESIZE_METHOD, check_pixel_limit, largest_batch
from petal.data.split import check_seed
from petal.errors import ConfigError
from petal.runtime.metadata import MAX_IMAGE_SIDE

AUGMENTATIONS = {
    "none": "no augmentation",
    "tutorial": "the tutorial's RandomFlip('horizontal'), RandomRotation(0.1), RandomZoom(0.1)",
    "crop-flip": "random resized crop (25-100% of the area, aspect 3/4-4/3) and horizontal flip",
    "crop-flip-color": "crop-flip, then brightness, contrast and saturation jitter of up to 30%",
    "randaugment": "crop-flip, then Keras's RandAugment (2 operations of magnitude 0.5)",
}
CROPPING_AUGMENTATIONS = ("crop-flip", "crop-flip-color", "randaugment")  # their random crops can take any output size


RECIPE = "the model's recipe, docs/TRAINING.md"  # where a setting's value comes from when not given


def setting(default, help: str, *, flag: str | None = None, choices=None, metavar=None, group: str | None = None,
            default_shown: str = RECIPE):
    """A TrainConfig field and everything its `petal train` flag needs: help, choices, metavar, group.

    `flag`: the option's name when it is not --FIELD-NAME. `choices` are also what __post_init__ accepts.
    `default_shown`: what the help says a missing flag means (most settings come from the model's recipe,
    petal.registry). Fields made without `setting` have no flag.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar, "group": group,
                                            "default_shown": default_shown})


SPLIT = "split"  # the settings `petal data` shares with `petal train`
PARALLEL = "data-parallel training (docs/SCALE.md)"
PRETRAINED = "pretrained backbones (mobilenet-*, efficientnet*: see `petal models`)"


@dataclass
class TrainConfig:
    """Every setting of a run, each defined once (`setting`): the field, its choices and its CLI flag.
    The defaults are the tutorial's; `for_model` starts from a model's recipe."""

    data_dir: str  # a folder of class sub-folders (petal train DIR)
    model: str  # a name from `petal models` (petal train --model)
    epochs: int = setting(15, "epochs to train (pretrained backbones: the head's, on cached embeddings)")
    batch_size: int = setting(32, "images per step (per replica)")
    image_size: tuple[int, int] = setting((180, 180), "model input size: validation, export and prediction", metavar=("HEIGHT", "WIDTH"))
    # "Train small, test large" (Touvron et al., 2019): faster epochs, objects seen at the size they are tested at.
    train_image_size: tuple[int, int] | None = setting(
        None, "size of the random training crops, if smaller than --image-size: faster epochs; none: the image size",
        metavar=("HEIGHT", "WIDTH"))
    val_split: float = setting(0.2, "fraction held out for validation", group=SPLIT, default_shown="0.2")
    seed: int = setting(123, "seed of the split (image_dataset_from_directory's), and of training unless --train-seed",
                        group=SPLIT, default_shown="123")
    split_method: str = setting("keras", "'keras': the files image_dataset_from_directory picks; 'stratified': the same fraction "
                                "of every class", flag="--split", choices=("keras", "stratified"), group=SPLIT, default_shown="keras")
    layout: str = setting("auto", "'split': DIR holds train/ and val/ (or validation/), each with the class sub-folders; 'classes': "
                          "every sub-folder is a class, whatever its name (Keras's reading); 'auto': split when only train/, val/ and "
                          "test/ sub-folders hold class folders, refused when the tree could be read both ways",
                          choices=("auto", "split", "classes"), group=SPLIT, default_shown="auto")
    follow_links: bool = setting(False, "follow symlinked sub-folders inside class folders (each real folder once); by default they "
                                 "are named in a warning and left out, as Keras's default does", group=SPLIT, default_shown="off")
    exclude: tuple[str, ...] = setting((), "leave these files out of the split (the rest keep their side): the JSON of `petal data "
                                       "--label-issues --json` (its label-issue and outlier paths) or a text file of paths, one per line",
                                       metavar="FILE", default_shown="none")  # config.json holds the paths, relative to data_dir
    train_seed: int | None = setting(None, "seed of weights, shuffling and augmentation; the split keeps --seed. Vary it to see "
                                     "the spread on one split", default_shown="--seed")
    optimizer: str = setting("adam", "adamw: decoupled weight decay", choices=("adam", "adamw"))
    learning_rate: float = setting(0.001, "peak learning rate (after warm-up)")
    weight_decay: float = setting(0.0, "decoupled weight decay, adamw only")
    lr_schedule: str = setting("constant", "cosine: decay to 0 over the run, after the warm-up", choices=("constant", "cosine"))
    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up")
    label_smoothing: float = setting(0.0, "e.g. 0.1")
    augmentation: str = setting("none", "; ".join(f"{k}: {v}" for k, v in AUGMENTATIONS.items()), choices=tuple(AUGMENTATIONS))
    mixup: float = setting(0.0, "MixUp alpha, 0 = off")
    cutmix: float = setting(0.0, "CutMix factor in 0..1 (each batch mixes with Beta(a, a), a drawn from 0..factor), 0 = off")
    early_stopping: int = setting(0, "stop after PATIENCE epochs without a better val accuracy and keep the best weights; 0 = off",
                                  metavar="PATIENCE", default_shown="off")
    test_time_flip: bool = setting(False, "the saved model averages its logits over each image and its mirror image (twice the "
                                   "inference time)")
    precision: str = setting("float32", "auto: bfloat16 on CPUs with AMX/AVX-512 BF16, float16 on GPUs, else float32",
                             choices=("auto", "float32", "bfloat16", "float16"))
    class_weight: str = setting("none", "'auto' weights the loss by inverse class frequency, for imbalanced folders",
                                choices=("none", "auto"), default_shown="none")
    deterministic: bool = setting(False, "reproducible to the last digit: same seed and data, same history (slower)", default_shown="off")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "images with more pixels are left out", default_shown=f"{DEFAULT_MAX_PIXELS:,}")
    cache_dir: str | None = setting(None, "decode and embedding cache", default_shown="$PETAL_CACHE_DIR or ~/.cache/petal")
    # Pretrained backbones only (petal.training.models.backbones); for them `epochs` are the head's.
    weights: str | None = setting(None, "backbone weights file; none: Keras's ImageNet file in ~/.keras/models (downloaded when "
                                  "missing), for mobilenet-v2 the copy shipped with petal when Keras has none",
                                  metavar="FILE", group=PRETRAINED, default_shown="ImageNet")
    fine_tune_blocks: int = setting(0, "after the head (--epochs, on cached embeddings), also train the top N blocks (batch norm "
                                    "stays frozen); 0: off", metavar="N", group=PRETRAINED)
    fine_tune_epochs: int = setting(8, "epochs of fine-tuning", group=PRETRAINED)
    fine_tune_warmup_epochs: int = setting(0, "epochs of linear warm-up of the fine-tuning rate, so the first steps on augmented "
                                           "images do not undo the head", group=PRETRAINED)
    fine_tune_learning_rate: float = setting(3e-4, "peak learning rate of fine-tuning (1e-3 collapsed MobileNet v1 0.25 to chance "
                                             "on flower_photos)", group=PRETRAINED)
    # Data-parallel training (petal.scale.multi_worker): each replica takes batch_size images per step.
    strategy: str = setting("single", "mirrored: every local GPU (MirroredStrategy), in this process; multi-worker: Ray Train "
                            "workers (set by --workers)", choices=("single", "mirrored", "multi-worker"), group=PARALLEL,
                            default_shown="single")
    workers: int = setting(1, "train on N Ray Train workers (MultiWorkerMirroredStrategy); needs petal-vision[scale]",
                           metavar="N", group=PARALLEL, default_shown="1: this process")
    lr_scaling: str = setting("linear", "with N replicas the peak learning rate is multiplied by N (linear, Goyal et al., 2017) "
                              "or not", choices=("linear", "none"), group=PARALLEL, default_shown="linear")
    preprocessing: str | None = None  # recorded from the model registry: what the model does to its 0..255 input
    resize_method: str = field(default=RESIZE_METHOD, init=False)  # recorded, not chosen: see petal.data.decode

    def resumed_with(self, **settings) -> "TrainConfig":
        """This (a run's saved) config with the settings given again to continue it; None keeps the saved value, so
        `petal train DIR --out RUN --resume` needs none of the run's options repeated."""
        return dataclasses.replace(self, **{k: v for k, v in settings.items() if v is not None})

    @classmethod
    def for_model(cls, data_dir: str, model: str, **settings) -> "TrainConfig":
        """The model's recipe (petal.registry registry), overridden by every setting that is not None.
        The recipe's warm-up is shortened to fit a run shorter than it; its training crops keep their
        ratio to the image size when only the image size is given."""
        from petal.registry import get_model_entry

        given = {k: v for k, v in settings.items() if v is not None}
        entry = get_model_entry(model)
        values = {**entry.recipe, **given, "preprocessing": entry.preprocessing}
        if "warmup_epochs" not in given:  # a short run of a recipe with warm-up still works: warm up for less
            values["warmup_epochs"] = max(0, min(values.get("warmup_epochs", 0), values.get("epochs", cls.epochs) - 1))
        if "fine_tune_warmup_epochs" not in given:
            values["fine_tune_warmup_epochs"] = max(0, min(values.get("fine_tune_warmup_epochs", 0),
                                                           values.get("fine_tune_epochs", cls.fine_tune_epochs) - 1))
        if "image_size" in given and "train_image_size" not in given and entry.recipe.get("train_image_size"):
            # another image size keeps the recipe's ratio of training crop to test size
            ratios = [t / i for t, i in zip(entry.recipe["train_image_size"], entry.recipe["image_size"])]
            values["train_image_size"] = tuple(max(8, round(r * side)) for r, side in zip(ratios, given["image_size"]))
        return cls(data_dir=data_dir, model=model, **values)

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def __post_init__(self):
        self.image_size = tuple(int(v) for v in self.image_size)
        self.exclude = tuple(sorted(set(self.exclude)))  # config.json holds a list
        if self.train_image_size is not None:
            self.train_image_size = tuple(int(v) for v in self.train_image_size)
        for name in ("image_size", "train_image_size"):
            size = getattr(self, name)
            if size is not None and (len(size) != 2 or min(size) < 8 or max(size) > MAX_IMAGE_SIDE):
                raise ConfigError(f"{name.replace('_', ' ')} must be two numbers (height width), each from 8 to {MAX_IMAGE_SIDE}. "
                                  f"Received: {name}={size}")
        if self.train_image_size is not None and any(t > i for t, i in zip(self.train_image_size, self.image_size)):
            raise ConfigError(f"train image size is the size of random crops of the image size, so at most it. Received: "
                              f"train_image_size={self.train_image_size}, image_size={self.image_size}")
        for name in ("val_split", "learning_rate", "weight_decay", "label_smoothing", "mixup", "cutmix", "fine_tune_learning_rate"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise ConfigError(f"{name} must be a finite number. Received: {name}={getattr(self, name)}")
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"validation split must be between 0 and 1. Received: val_split={self.val_split}")
        for name in ("seed", "train_seed"):
            check_seed(getattr(self, name), name)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1. Received: {name}={getattr(self, name)}")
        if self.batch_size > largest_batch(self.image_size):
            raise ConfigError(f"batch size must be at most {largest_batch(self.image_size):,} at image size {self.image_size[0]}x{self.image_size[1]} "
                              f"(a batch's float32 pixels within {MAX_BATCH_BYTES >> 30} GiB). Received: batch_size={self.batch_size:,}")
        check_pixel_limit(self.max_pixels)
        for f in dataclasses.fields(self):
            valid = f.metadata.get("choices")
            if valid and getattr(self, f.name) not in valid:
                raise ConfigError(f"{f.name} must be one of {', '.join(valid)}. Received: {f.name}={getattr(self, f.name)!r}")
        if self.trains_at_another_size and self.augmentation not in CROPPING_AUGMENTATIONS:
            raise ConfigError(f"train image size is the size of random training crops: it needs augmentation "
                              f"{', '.join(CROPPING_AUGMENTATIONS)}. Received: augmentation={self.augmentation!r}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning rate must be positive. Received: learning_rate={self.learning_rate}")
        if self.weight_decay < 0 or (self.weight_decay and self.optimizer != "adamw"):
            raise ConfigError(f"weight decay needs optimizer 'adamw' and a value >= 0. Received: weight_decay={self.weight_decay}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warm-up must be 0 or more epochs, and shorter than the run. Received: warmup_epochs={self.warmup_epochs}, "
                              f"epochs={self.epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1). Received: label_smoothing={self.label_smoothing}")
        if self.mixup < 0 or self.early_stopping < 0:
            raise ConfigError("mixup and early_stopping must not be negative")
        if not 0 <= self.cutmix <= 1:  # Keras's CutMix takes a factor in [0, 1]
            raise ConfigError(f"cutmix must be in [0, 1]. Received: cutmix={self.cutmix}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1. Received: workers={self.workers}")
        if self.workers > 1 and self.strategy != "multi-worker":
            raise ConfigError(f"more than one worker needs strategy 'multi-worker'. Received: workers={self.workers}, strategy={self.strategy!r}")
        if self.fine_tune_blocks < 0 or self.fine_tune_epochs < 1 or self.fine_tune_learning_rate <= 0:
            raise ConfigError(
                "fine-tuning needs blocks >= 0, epochs >= 1 and a positive learning rate (no fine-tuning: blocks 0). Received: "
                f"fine_tune_blocks={self.fine_tune_blocks}, fine_tune_epochs={self.fine_tune_epochs}, "
                f"fine_tune_learning_rate={self.fine_tune_learning_rate}"
            )
        if not 0 <= self.fine_tune_warmup_epochs < self.fine_tune_epochs:
            raise ConfigError(f"fine-tuning warm-up must be 0 or more epochs, and shorter than fine-tuning. Received: fine_tune_warmup_epochs="
                              f"{self.fine_tune_warmup_epochs}, fine_tune_epochs={self.fine_tune_epochs}")

    def learning_rate_for(self, base: float, replicas: int) -> float:
        """The peak rate `base` under `lr_scaling` for a global batch of batch_size x replicas."""
        return base * replicas if self.lr_scaling == "linear" else base

    @property
    def training_image_size(self) -> tuple[int, int]:
        return self.train_image_size or self.image_size

    @property
    def trains_at_another_size(self) -> bool:
        """Training crops differ from the model's input size: the model must take any size while it trains."""
        return self.training_image_size != self.image_size

    @property
    def total_epochs(self) -> int:
        """Epochs in history.csv: a pretrained backbone's fine-tuning epochs follow its head's."""
        return self.epochs + (self.fine_tune_epochs if self.fine_tune_blocks else 0)

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
        from petal.run_folder import read_json  # here: run_folder imports this module

        try:
            return cls.from_dict(read_json(path))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


EXPORT_VARIANTS = ("float32", "float16", "dynamic", "int8")
INT8_IO_TYPES = ("float32", "uint8", "int8")


@dataclass
class ExportConfig:
    """Which LiteRT variants `petal export` makes, and the parity gate each must pass to be written."""

    variants: tuple[str, ...] = EXPORT_VARIANTS
    int8_io: str = "float32"  # the int8 variant's input/output tensors; uint8 or int8 for integer-only accelerators
    calibration_images: int = 300  # training images (never validation images) that calibrate int8
    min_float_agreement: float = 0.995  # float32 and float16: share of validation images with Keras's top-1 class
    max_float32_logit_diff: float = 1e-3  # float32 only: largest |logit difference| from Keras
    max_accuracy_drop: float = 0.01  # dynamic and int8: accuracy lost against Keras, as a fraction
    gate: bool = True  # False: write failing variants too (still reported as failed)
    threads: tuple[int, ...] = (1, 2)  # interpreter thread counts that speed is measured at

    def __post_init__(self):
        self.variants = tuple(self.variants)
        self.threads = tuple(int(t) for t in self.threads)
        unknown = [v for v in self.variants if v not in EXPORT_VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants must be distinct names from {', '.join(EXPORT_VARIANTS)}. Received: {','.join(self.variants)}")
        if self.int8_io not in INT8_IO_TYPES:
            raise ConfigError(f"int8 input/output type must be float32, uint8 or int8. Received: int8_io={self.int8_io!r}")
        if self.calibration_images < 1:
            raise ConfigError(f"calibration images must be at least 1. Received: calibration_images={self.calibration_images}")
        if not 0 <= self.min_float_agreement <= 1 or not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError("agreement and accuracy drop are fractions between 0 and 1")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError(f"thread counts must be at least 1. Received: threads={self.threads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
