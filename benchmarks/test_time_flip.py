"""What test-time flips add: each run's model.keras on its own validation split, with and without them.

    python benchmarks/test_time_flip.py RUN_DIR [RUN_DIR ...]

For a model trained with --test-time-flip the classifier inside it is evaluated alone too; for one trained
without, it is wrapped. Same weights, same decoded images (petal's one decode function, at the run's image
size), so the difference is the flip alone. Prints one row per run.
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

    from petal.image import decode_image
    from petal.models.test_time_flip import AddMirrorImages, with_test_time_flip
    from petal.run import RunFolder

    print(f"machine: {machine()}\n")
    print("| run | validation images | without flips | with flips | difference (points) |")
    print("|---|---|---|---|---|")
    for path in args.runs:
        run = RunFolder(path)
        model, config, validation = run.load_model(), run.config(), run.split("validation")
        flipping = isinstance(model.layers[1], AddMirrorImages)
        plain = model.layers[2] if flipping else model
        flipped = model if flipping else with_test_time_flip(model)
        size = tuple(config.image_size)
        images = np.stack([decode_image(Path(validation.root) / p, size) for p in validation.paths]).astype(np.float32)
        labels = np.asarray(validation.labels)
        without, with_flips = accuracy(plain, images, labels), accuracy(flipped, images, labels)
        print(f"| {path} | {len(labels)} | {without:.4f} | {with_flips:.4f} | {100 * (with_flips - without):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
