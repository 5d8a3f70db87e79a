"""Variants of the default model's recipe (pretrained MobileNetV2, head on cached embeddings, then the top
blocks fine-tuned), each a `petal train` process of its own on the tutorial's split, in one run.

    python benchmarks/default_recipe.py [--data ../shared/datasets/flower_photos] [--out benchmarks/results/default-recipe]
                                        [--variants recipe ...]

The first variant decodes into a fresh decode cache (its wall time is the cold one); the others read it.
Prints one table (final and best validation accuracy, wall time, fine-tuning seconds per epoch, peak RSS)
and writes results.json. Each variant is the recipe with the `petal train` options given below.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, read_history, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "recipe": [],
    "fine-tune-5-epochs": ["--fine-tune-epochs", "5"],
    "fine-tune-4-blocks": ["--fine-tune-blocks", "4"],
    "fine-tune-12-blocks": ["--fine-tune-blocks", "12"],
    "160px": ["--image-size", "160", "160"],
    "bfloat16": ["--precision", "auto"],
    "crop-flip-color": ["--augmentation", "crop-flip-color"],
    "no-label-smoothing": ["--label-smoothing", "0"],
    "lr-1e-4": ["--fine-tune-learning-rate", "1e-4"],
    "frozen": ["--fine-tune-blocks", "0"],
    "batch-16": ["--batch-size", "16"],
    "batch-32": ["--batch-size", "32"],
    "batch-16-warmup-1": ["--batch-size", "16", "--fine-tune-warmup-epochs", "1"],
    "batch-32-warmup-1": ["--batch-size", "32", "--fine-tune-warmup-epochs", "1"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "default-recipe")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    petal = [sys.executable, "-m", "petal"]
    rows = []
    for name in args.variants:
        run_dir = args.out / f"run-{name}"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")
        command = petal + ["train", args.data, *VARIANTS[name], "--out", str(run_dir), "--cache-dir", str(args.out / "cache")]
        measured = run_measured(command, args.out / f"train-{name}.log")
        history = read_history(run_dir / "history.csv")
        timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {}
        config = json.loads((run_dir / "config.json").read_text())
        fine_tune_epochs = config["fine_tune_epochs"] if config["fine_tune_blocks"] else 0
        rows.append({"variant": name, "options": VARIANTS[name], **measured, "history": history, "timings": timings,
                     "fine_tune_epochs": fine_tune_epochs})
        print(f"{name}: exit {measured['returncode']}, {measured['wall_seconds']:.0f} s, final val acc "
              f"{history[-1]['val_accuracy'] if history else 'n/a'}", flush=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))

    print(f"\nmachine: {machine()}\n")
    print("| variant | options | final val acc | best val acc | wall time | decode | embeddings | fine-tune s/epoch | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        history, timings = row["history"], row["timings"]
        per_epoch = timings.get("fine_tune", 0) / row["fine_tune_epochs"] if row["fine_tune_epochs"] else 0
        print(f"| {row['variant']} | `{' '.join(row['options']) or '(none)'}` | {history[-1]['val_accuracy']:.4f} | "
              f"{max(r['val_accuracy'] for r in history):.4f} | {row['wall_seconds']:.0f} s | {timings.get('decode', 0):.0f} s | "
              f"{timings.get('embeddings', 0):.0f} s | {per_epoch:.1f} | {row['peak_rss_mb']:.0f} |")
    print()
    for row in rows:
        print(f"{row['variant']}: val accuracy per epoch: " + " ".join(f"{r['val_accuracy']:.3f}" for r in row["history"]))


if __name__ == "__main__":
    main()
