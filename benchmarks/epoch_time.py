"""Where an epoch of the default model's training goes: input pipeline versus model, per precision and batch size.

    python benchmarks/epoch_time.py [--data ../shared/datasets/flower_photos] [--batch-sizes 32 64 128]

For each setting, on the tutorial's training split through petal's own pipeline (decode cache, shuffle,
one-hot, the recipe's augmentation):
  pipeline   images/s of the tf.data pipeline alone, iterated without a model;
  step       images/s of the model's train step alone, on one batch already in memory;
  fit        images/s of a real `fit` epoch (pipeline and model sharing the cores).
If `fit` is close to `step`, the model is the bottleneck and the pipeline costs little.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--cache-dir", default=str(HERE / "results" / "flowers" / "decode-cache"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from petal.config import TrainConfig
    from petal.registry import DEFAULT_MODEL
    from petal.training.augment import build_augmentation
    from petal.training.loop import build_classifier, decode_cache, make_split
    from petal.training.optimization import compile_for_training
    from petal.training.pipeline import make_dataset
    from petal.training.precision import KERAS_POLICY

    base = TrainConfig.for_model(args.data, DEFAULT_MODEL, cache_dir=args.cache_dir)
    images = decode_cache(base).load(make_split(base).train)
    augment = build_augmentation(base.augmentation, base.training_image_size, base.mixup, base.cutmix)
    print(f"machine: {machine()}; TensorFlow {tf.__version__}, inter/intra-op threads "
          f"{tf.config.threading.get_inter_op_parallelism_threads()}/{tf.config.threading.get_intra_op_parallelism_threads()} (0 = all cores)")
    print(f"{DEFAULT_MODEL} training on {base.training_image_size[0]}x{base.training_image_size[1]} crops, augmentation {base.augmentation}, {len(images)} training images\n")
    print("| precision | batch | pipeline img/s | step img/s | fit img/s | fit / step |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions:
        for batch_size in args.batch_sizes:
            config = TrainConfig.for_model(args.data, DEFAULT_MODEL, batch_size=batch_size, precision=precision)
            dataset = make_dataset(images, batch_size, 5, shuffle_seed=1, augment=augment)
            started = time.perf_counter()
            for _ in dataset:
                pass
            pipeline = len(images) / (time.perf_counter() - started)

            keras.config.set_dtype_policy(KERAS_POLICY[precision])
            model = build_classifier(config, 5).classifier
            compile_for_training(model, config, len(images))
            x, y = next(iter(dataset))
            for _ in range(2):
                model.train_on_batch(x, y)
            steps = max(3, 512 // batch_size)
            started = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            step = steps * batch_size / (time.perf_counter() - started)

            model.fit(dataset.take(2), verbose=0)  # trace
            started = time.perf_counter()
            model.fit(dataset, verbose=0)
            fit = len(images) / (time.perf_counter() - started)
            keras.config.set_dtype_policy("float32")
            print(f"| {precision} | {batch_size} | {pipeline:.0f} | {step:.0f} | {fit:.0f} | {fit / step:.2f} |", flush=True)


if __name__ == "__main__":
    main()
