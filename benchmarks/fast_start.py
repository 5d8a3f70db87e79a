"""How soon does the default model reach a target validation accuracy? Variants of its recipe, side by side.

    python benchmarks/fast_start.py [--data ../shared/datasets/flower_photos] [--epochs 10] [--target 0.74]
                                    [--variants recipe 144 ...]

Each variant trains the default model on the tutorial's split (seed 123) for the first --epochs epochs of the
recipe's own schedule (the learning rate follows the full run, as it would in `petal train`; the schedule-N
variants shorten the whole run to N epochs instead), in its own process,
one after the other. Prints, per variant: seconds per epoch (median), validation accuracy after each epoch, and
the first epoch (and seconds since the start of `fit`, tracing included) at which it reached --target.
Variants that petal does not offer (EMA, XLA, warm restarts, a patch stem) are built here, to measure them before adding them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

HERE = Path(__file__).resolve().parent

# TrainConfig overrides, plus experiment-only knobs (names starting with "_").
VARIANTS = {
    "recipe": {},
    "144": {"train_image_size": (144, 144)},
    "96": {"train_image_size": (96, 96)},
    "80": {"train_image_size": (80, 80)},
    "64": {"train_image_size": (64, 64)},
    "ema": {"_ema": 0.99},
    "weak-crops": {"augmentation": "crop-flip", "_crop_area_min": 0.5},
    "xla": {"_jit": True},
    "restarts-6": {"_restart_epochs": 6},
    "batch-16": {"batch_size": 16},
    "lr-4e-3": {"learning_rate": 0.004},
    "lr-1e-3": {"learning_rate": 0.001},
    "schedule-8": {"epochs": 8},  # the whole schedule (warm-up, cosine to 0) in 8 epochs: a short run, not the default
    "schedule-12-80": {"epochs": 12, "train_image_size": (80, 80)},
    "no-warm-up": {"warmup_epochs": 0},
    "patch-stem": {"_stem": ((4, 4), (1, 2, 2, 2))},  # a 4x4 stride-4 stem, the first stage at its resolution
}


def run_variant(name: str, data: str, cache_dir: str, epochs: int) -> None:
    """One variant in this process: prints one JSON line per epoch."""
    import keras

    import petal.training.augment
    from petal.config import TrainConfig
    from petal.registry import DEFAULT_MODEL
    from petal.training.augment import build_augmentation
    from petal.training.loop import build_classifier, make_split, prepare_data
    from petal.training.optimization import compile_for_training, dtype_policy, learning_rate
    from petal.training.pipeline import make_dataset
    from petal.training.precision import resolve_precision

    knobs = {k: v for k, v in VARIANTS[name].items() if k.startswith("_")}
    settings = {k: v for k, v in VARIANTS[name].items() if not k.startswith("_")}
    config = TrainConfig.for_model(data, DEFAULT_MODEL, cache_dir=cache_dir, **settings)
    keras.utils.set_random_seed(config.training_seed)
    data_ = prepare_data(config, make_split(config))
    if "_stem" in knobs:
        import petal.training.models.resnet
        petal.training.models.resnet.STEM, petal.training.models.resnet.STRIDES = knobs["_stem"]
    if "_crop_area_min" in knobs:
        crop = petal.training.augment.random_resized_crop
        petal.training.augment.random_resized_crop = lambda images, size: crop(images, size, area=(knobs["_crop_area_min"], 1.0))
    with dtype_policy(resolve_precision(config.precision)):
        model = build_classifier(config, 5).classifier
        compile_for_training(model, config, len(data_.train))
        if "_ema" in knobs or "_restart_epochs" in knobs:
            steps = -(-len(data_.train) // config.batch_size)
            rate = (keras.optimizers.schedules.CosineDecayRestarts(config.learning_rate, knobs["_restart_epochs"] * steps)
                    if "_restart_epochs" in knobs else
                    learning_rate(config.lr_schedule, config.learning_rate, config.epochs, config.warmup_epochs, steps))
            optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, use_ema="_ema" in knobs,
                                               ema_momentum=knobs.get("_ema", 0.99))
            model.compile(optimizer=optimizer, loss=model.loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        if knobs.get("_jit"):
            model.jit_compile = True
        augment = build_augmentation(config.augmentation, config.training_image_size, config.mixup, config.cutmix)
        train = make_dataset(data_.train, config.batch_size, 5, shuffle_seed=config.training_seed, augment=augment)
        validation = make_dataset(data_.validation, config.batch_size, 5)
        callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if "_ema" in knobs else []

        class Report(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.started = self.epoch_started = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                now = time.perf_counter()
                print(json.dumps({"epoch": epoch + 1, "seconds": now - self.epoch_started, "elapsed": now - self.started,
                                  "val_accuracy": logs["val_accuracy"]}), flush=True)

        model.fit(train, validation_data=validation, epochs=min(epochs, config.epochs), callbacks=[*callbacks, Report()], verbose=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--cache-dir", default=str(HERE / "results" / "flowers" / "decode-cache"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.74, help="validation accuracy to reach (tutorial-augmented's final one)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the child process of one variant
    args = parser.parse_args()
    if args.one:
        return run_variant(args.one, args.data, args.cache_dir, args.epochs)

    print(f"machine: {machine()}\nfirst {args.epochs} epochs of the default recipe's schedule; target {args.target}\n")
    print("| variant | settings | s/epoch | val accuracy per epoch | first reached target |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        child = subprocess.run([sys.executable, __file__, "--one", name, "--data", args.data, "--cache-dir", args.cache_dir,
                                "--epochs", str(args.epochs)], capture_output=True, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        epochs = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        if child.returncode or not epochs:
            print(f"| {name} | failed: {child.stderr.strip().splitlines()[-1:]} | | | |", flush=True)
            continue
        reached = next((e for e in epochs if e["val_accuracy"] >= args.target), None)
        accuracies = " ".join(f"{e['val_accuracy']:.3f}" for e in epochs)
        first = f"epoch {reached['epoch']}, {reached['elapsed']:.0f} s" if reached else f"not in {len(epochs)} epochs"
        settings = json.dumps(VARIANTS[name]) if VARIANTS[name] else "the recipe"
        print(f"| {name} | {settings} | {statistics.median(e['seconds'] for e in epochs):.1f} | {accuracies} | {first} |",
              flush=True)


if __name__ == "__main__":
    main()
