"""petal's default model against the tutorial's augmented model, on the tutorial's split, in one run.

    python benchmarks/flowers.py [--data ../shared/datasets/flower_photos] [--out benchmarks/results/flowers]
                                 [--seeds 123 7] [--epochs N]

Runs, each as its own process so that its peak RSS is its own, all on the tutorial's split (seed 123,
the same 734 validation files):
  1. petal train --model tutorial-augmented --epochs 15 (the tutorial's recipe);
  2. petal train (the default model and recipe, nothing else given) once per --seeds value, passed as
     --train-seed: the split stays the tutorial's, only weights, shuffling and augmentation change;
then petal export --quantize float32 of each (size and parity gate).
Prints one table; writes results.json. "to reach" is the training time until the run's validation
accuracy first reached the tutorial-augmented model's final one.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, read_history, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flowers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 7], help="training seeds of the default model")
    parser.add_argument("--epochs", type=int, help="epochs of the default model (default: its recipe)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from petal.models import DEFAULT_MODEL, create_model

    petal = [sys.executable, "-m", "petal"]
    cache = ["--cache-dir", str(args.out / "decode-cache")]
    jobs = [("tutorial-augmented", ["--model", "tutorial-augmented", "--epochs", "15"])]
    for seed in args.seeds:
        extra = ["--epochs", str(args.epochs)] if args.epochs else []
        jobs.append((f"{DEFAULT_MODEL} seed {seed}", ["--train-seed", str(seed), *extra]))
    rows = []
    for name, options in jobs:
        run_dir = args.out / ("run-" + name.replace(" ", "-"))
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")
        trained = run_measured(petal + ["train", args.data, *options, "--out", str(run_dir), *cache], args.out / f"train-{run_dir.name}.log")
        exported = run_measured(petal + ["export", str(run_dir), "--quantize", "float32"], args.out / f"export-{run_dir.name}.log")
        config = json.loads((run_dir / "config.json").read_text())
        report = json.loads((run_dir / "export" / "report.json").read_text()) if (run_dir / "export" / "report.json").exists() else None
        history = read_history(run_dir / "history.csv")
        rows.append({
            "run": name, "run_dir": str(run_dir), "config": config, "train": trained, "export_returncode": exported["returncode"],
            "history": history, "float32": report["variants"][0] if report else None,
            "params": create_model(config["model"], 5, config["image_size"]).classifier.count_params(),
            "train_images": len((run_dir / "split" / "train.csv").read_text().splitlines()) - 1,
        })
        print(f"{name}: exit {trained['returncode']}, {trained['wall_seconds']:.0f} s, final val acc "
              f"{history[-1]['val_accuracy'] if history else 'n/a'}", flush=True)

    target = rows[0]["history"][-1]["val_accuracy"]
    results = {"machine": machine(), "data": args.data, "target_val_accuracy": target, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nmachine: {results['machine']}")
    print(f"target: tutorial-augmented's final validation accuracy, {target:.4f}\n")
    print("| run | epochs | final val acc | best val acc | training time | to reach target | train img/s | peak RSS MB | params | float32 .tflite MB | parity gate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        history = row["history"]
        seconds = [r["seconds"] for r in history]
        elapsed = [sum(seconds[: i + 1]) for i in range(len(seconds))]
        reached = next((t for t, r in zip(elapsed, history) if r["val_accuracy"] >= target), None)
        float32 = row["float32"] or {}
        print(
            f"| {row['run']} | {len(history)} | {history[-1]['val_accuracy']:.4f} | {max(r['val_accuracy'] for r in history):.4f} | "
            f"{elapsed[-1] / 60:.1f} min | {f'{reached / 60:.1f} min' if reached else 'never'} | "
            f"{row['train_images'] * len(history) / elapsed[-1]:.0f} | {row['train']['peak_rss_mb']:.0f} | {row['params']:,} | "
            f"{float32.get('file_bytes', 0) / 1e6:.2f} | {'pass' if float32.get('passed') else 'FAIL'} |"
        )
    print()
    for row in rows:
        print(f"{row['run']}: val accuracy per epoch: " + " ".join(f"{r['val_accuracy']:.3f}" for r in row["history"]))



if __name__ == "__main__":
    main()
