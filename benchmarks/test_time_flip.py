"""What test-time flips add: each run's model.keras on its own validation split, with and without them.

    python benchmarks/test_time_flip.py RUN_DIR [RUN_DIR ...]

For a model trained with --test-time-flip the classifier inside it is evaluated alone too; for one trained
without, it is wrapped. Same weights, same decoded images (the run's own decode cache, as its validation
during training), so the difference is the flip alone. Prints one row per run.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    logits = model.predict(images, batch_size=64, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()

    import keras

    from petal.run_folder import RunFolder
    from petal.training.loop import decode_cache
    from petal.training.models.flip_average import with_test_time_flip

    print(f"machine: {machine()}\n")
    print("| run | validation images | without flips | with flips | difference (points) |")
    print("|---|---|---|---|---|")
    for path in args.runs:
        run = RunFolder(path)
        model, config = run.load_model(), run.config()
        if config.test_time_flip:  # the classifier is the one model nested in with_test_time_flip's wrapper
            plain, flipped = next(layer for layer in model.layers if isinstance(layer, keras.Model)), model
        else:
            plain, flipped = model, with_test_time_flip(model)
        rows = decode_cache(config).load(run.split("validation"))
        images, labels = rows.gather(np.arange(len(rows))).astype(np.float32), rows.labels
        without, with_flips = accuracy(plain, images, labels), accuracy(flipped, images, labels)
        print(f"| {path} | {len(labels)} | {without:.4f} | {with_flips:.4f} | {100 * (with_flips - without):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
