"""Transfer learning from the one offline ImageNet file against training from scratch, in one run.

    python benchmarks/transfer.py [--data ../shared/datasets/flower_photos]
                                  [--weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5]
                                  [--out benchmarks/results/transfer] [--fine-tune-blocks 13]

Runs, each as its own process (its peak RSS is its own), all on the tutorial's split (seed 123):
  1. petal train --model tutorial-augmented --epochs 15      (the tutorial's recipe)
  2. petal train                                             (the default model and recipe)
  3. petal train --model mobilenet-v1-0.25 --weights FILE    (frozen: head on embeddings; cold caches)
  4. the same command again into a new run folder            (the embedding cache at work: nothing computed)
  5. the same with --fine-tune-blocks N                      (frozen head, then the top N blocks fine-tuned)
then petal export --quantize float32,int8 of each (sizes, 1-thread latency, parity gate on all 734
validation images). Prints one table; writes results.json. The time split comes from each run's
timings.json: decode (or read the decode cache), embeddings, head, fine-tuning; "train" for models
trained from scratch.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, read_history, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
TRANSFER_MODEL = "mobilenet-v1-0.25"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--weights", default=str(HERE.parent.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "transfer")
    parser.add_argument("--fine-tune-blocks", type=int, default=13, help="blocks fine-tuned in run 5 (MobileNet v1 has 13)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from petal.registry import DEFAULT_MODEL

    petal = [sys.executable, "-m", "petal"]
    cache = ["--cache-dir", str(args.out / "cache")]
    transfer = ["--model", TRANSFER_MODEL, "--weights", args.weights]
    jobs = [
        ("tutorial-augmented", ["--model", "tutorial-augmented", "--epochs", "15"]),
        (DEFAULT_MODEL, []),
        (f"{TRANSFER_MODEL} frozen", transfer),
        (f"{TRANSFER_MODEL} frozen, again", transfer),
        (f"{TRANSFER_MODEL} fine-tuned {args.fine_tune_blocks} blocks", [*transfer, "--fine-tune-blocks", str(args.fine_tune_blocks)]),
    ]
    rows = []
    for name, options in jobs:
        run_dir = args.out / ("run-" + name.replace(" ", "-").replace(",", ""))
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")
        trained = run_measured(petal + ["train", args.data, *options, "--out", str(run_dir), *cache], args.out / f"train-{run_dir.name}.log")
        exported = run_measured(petal + ["export", str(run_dir), "--quantize", "float32,int8"], args.out / f"export-{run_dir.name}.log")
        report_path = run_dir / "export" / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {"variants": []}
        log_text = (args.out / f"train-{run_dir.name}.log").read_text()
        rows.append({
            "run": name, "run_dir": str(run_dir), "train": trained, "export_returncode": exported["returncode"],
            "history": read_history(run_dir / "history.csv"),
            "timings": json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {},
            "embedding_log": [line.strip() for line in log_text.splitlines() if "read from the embedding cache" in line],
            "variants": {v["variant"]: v for v in report["variants"]},
        })
        print(f"{name}: exit {trained['returncode']}, {trained['wall_seconds']:.0f} s, final val acc "
              f"{rows[-1]['history'][-1]['val_accuracy'] if rows[-1]['history'] else 'n/a'}", flush=True)

    results = {"machine": machine(), "data": args.data, "weights": args.weights, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nmachine: {results['machine']}\n")
    print("| run | final val acc | best val acc | wall time (process) | decode | embeddings | head | fine-tuning | train (scratch) "
          "| peak RSS MB | float32 .tflite MB | int8 .tflite MB | int8 val acc | int8 ms/img (1 thread) | gate |")
    print("|---|" + "---|" * 14)
    for row in rows:
        history, t, v = row["history"], row["timings"], row["variants"]
        f32, i8 = v.get("float32", {}), v.get("int8", {})
        seconds = lambda key: f"{t[key]:.0f} s" if key in t else "—"  # noqa: E731
        gate = "pass" if f32.get("passed") and i8.get("passed") else "FAIL"
        print(
            f"| {row['run']} | {history[-1]['val_accuracy']:.4f} | {max(r['val_accuracy'] for r in history):.4f} | "
            f"{row['train']['wall_seconds']:.0f} s | {seconds('decode')} | {seconds('embeddings')} | {seconds('head')} | "
            f"{seconds('fine_tune')} | {seconds('train')} | {row['train']['peak_rss_mb']:.0f} | "
            f"{f32.get('file_bytes', 0) / 1e6:.2f} | {i8.get('file_bytes', 0) / 1e6:.2f} | {i8.get('accuracy', 0):.4f} | "
            f"{i8.get('speed', {}).get('latency_ms', {}).get('1', float('nan')):.2f} | {gate} |"
        )
    print()
    for row in rows:
        if row["embedding_log"]:
            print(f"{row['run']}: " + "; ".join(row["embedding_log"]))



if __name__ == "__main__":
    main()
