"""petal's default model against the tutorial's augmented model and petal-resnet, on the tutorial's split, in one run.

    python benchmarks/flowers.py [--data ../shared/datasets/flower_photos] [--out benchmarks/results/flowers]
                                 [--seeds 123 7] [--skip-resnet]

Runs, each as its own process (so that its peak RSS is its own) with a decode cache of its own (so that
its wall time is from a cold cache), all on the tutorial's split (seed 123, the same 734 validation files):
  1. petal train --model tutorial-augmented --epochs 15 (the tutorial's recipe);
  2. petal train (the default model and recipe, nothing else given) once per --seeds value, passed as
     --train-seed: the split stays the tutorial's, only the head's initial weights, shuffling and
     augmentation change;
  3. petal train --model petal-resnet (from scratch, its recipe), unless --skip-resnet;
then petal export --quantize float32,int8 of each (sizes, the parity gate's verdicts, int8 latency).
Prints one table and writes results.json.

Columns: "cold" is the process's wall time; "warm" is what a second run on the same folder takes, the
same wall time less the decoding and embedding that its caches would serve (timings.json). "to reach" is
the time from the start of decoding until the end of the epoch whose validation accuracy first reached
tutorial-augmented's final one (decode, embeddings and epochs, from timings.json and history.csv).
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
    parser.add_argument("--skip-resnet", action="store_true", help="leave out petal-resnet (about 20 minutes)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from petal.registry import DEFAULT_MODEL

    petal = [sys.executable, "-m", "petal"]
    jobs = [("tutorial-augmented", ["--model", "tutorial-augmented", "--epochs", "15"])]
    jobs += [(f"{DEFAULT_MODEL} (default) seed {seed}", ["--train-seed", str(seed)]) for seed in args.seeds]
    if not args.skip_resnet:
        jobs.append(("petal-resnet (from scratch)", ["--model", "petal-resnet"]))
    rows = []
    for name, options in jobs:
        slug = name.split(" (")[0] + ("-seed-" + name.rsplit(" ", 1)[-1] if "seed" in name else "")
        run_dir = args.out / f"run-{slug}"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")
        cache = ["--cache-dir", str(args.out / f"cache-{slug}")]
        trained = run_measured(petal + ["train", args.data, *options, "--out", str(run_dir), *cache], args.out / f"train-{slug}.log")
        exported = run_measured(petal + ["export", str(run_dir), "--quantize", "float32,int8"], args.out / f"export-{slug}.log")
        report_path = run_dir / "export" / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {"variants": []}
        rows.append({
            "run": name, "run_dir": str(run_dir), "config": json.loads((run_dir / "config.json").read_text()),
            "train": trained, "export": exported, "history": read_history(run_dir / "history.csv"),
            "timings": json.loads((run_dir / "timings.json").read_text()),
            "variants": {v["variant"]: v for v in report["variants"]},
            "train_images": len((run_dir / "split" / "train.csv").read_text().splitlines()) - 1,
        })
        history = rows[-1]["history"]
        print(f"{name}: exit {trained['returncode']}, {trained['wall_seconds']:.0f} s, final val acc "
              f"{history[-1]['val_accuracy'] if history else 'n/a'}", flush=True)

    target = rows[0]["history"][-1]["val_accuracy"]
    results = {"machine": machine(), "data": args.data, "target_val_accuracy": target, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print_table(results)


def reach_seconds(row: dict, target: float) -> float | None:
    """Seconds from the start of decoding to the end of the first epoch at or above `target`."""
    elapsed = row["timings"].get("decode", 0) + row["timings"].get("embeddings", 0)
    for epoch in row["history"]:
        elapsed += epoch["seconds"]
        if epoch["val_accuracy"] >= target:
            return elapsed
    return None


def print_table(results: dict) -> None:
    target, rows = results["target_val_accuracy"], results["rows"]
    tutorial_wall = rows[0]["train"]["wall_seconds"]
    print(f"\nmachine: {results['machine']}")
    print(f"target: tutorial-augmented's final validation accuracy, {target:.4f}; its wall time {tutorial_wall:.0f} s\n")
    print("| run | epochs | final val acc | best val acc | wall, cold cache | warm | to reach target | train img/s | "
          "peak RSS MB | float32 MB | int8 MB | int8 acc | int8 ms (1 thread) | gate float32 / int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        history, timings, variants = row["history"], row["timings"], row["variants"]
        wall = row["train"]["wall_seconds"]
        warm = wall - timings.get("decode", 0) - timings.get("embeddings", 0)
        reached = reach_seconds(row, target)
        # images through the network per second: a pretrained model's head epochs see embeddings, not images
        image_epochs = history[row["config"]["epochs"]:] if row["config"].get("fine_tune_blocks") else history
        trained_seconds = sum(e["seconds"] for e in image_epochs)
        float32, int8 = variants.get("float32", {}), variants.get("int8", {})
        verdict = " / ".join("pass" if v.get("passed") else ("FAIL" if v else "n/a") for v in (float32, int8))
        int8_ms = int8.get("speed", {}).get("latency_ms", {}).get("1")
        print(
            f"| {row['run']} | {len(history)} | {history[-1]['val_accuracy']:.4f} | {max(e['val_accuracy'] for e in history):.4f} | "
            f"{wall / 60:.1f} min | {warm / 60:.1f} min | "
            f"{f'{reached:.0f} s ({reached / tutorial_wall:.2f} of the tutorial)' if reached else 'never'} | "
            f"{row['train_images'] * len(image_epochs) / max(trained_seconds, 1e-9):.0f} | {row['train']['peak_rss_mb']:.0f} | "
            f"{float32.get('file_bytes', 0) / 1e6:.2f} | {int8.get('file_bytes', 0) / 1e6:.2f} | "
            f"{int8.get('accuracy', float('nan')):.4f} | {int8_ms if int8_ms is None else f'{int8_ms:.1f}'} | {verdict} |"
        )
    print()
    for row in rows:
        print(f"{row['run']}: val accuracy per epoch: " + " ".join(f"{r['val_accuracy']:.3f}" for r in row["history"]))


if __name__ == "__main__":
    main()
