"""The tutorial's two models trained by petal, beside the tutorial's own code, in one run.

    python benchmarks/tutorial.py [--data ../shared/datasets/flower_photos] [--out benchmarks/results/tutorial]

Runs, each as its own process so that its peak RSS is its own:
  1. the tutorial as printed (benchmarks/tutorial_as_printed.py, augmented model) for --baseline-epochs,
     the baseline for memory: its float32 .cache() of every image is full after the first epoch;
  2. petal train --model tutorial --epochs 10, then petal export (parity on the whole validation split);
  3. petal train --model tutorial-augmented --epochs 15 (its decode cache now warm), then petal export.
Prints per-epoch validation accuracy, wall time, peak memory and .tflite size; writes results.json.
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
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tutorial")
    parser.add_argument("--baseline-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs=2, default=(10, 15), metavar=("TUTORIAL", "AUGMENTED"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "decode-cache"
    rows = []

    baseline_json = args.out / "baseline.json"
    measured = run_measured(
        [sys.executable, str(HERE / "tutorial_as_printed.py"), args.data, "augmented", str(args.baseline_epochs), str(baseline_json)],
        args.out / "baseline.log",
    )
    baseline = json.loads(baseline_json.read_text()) if measured["returncode"] == 0 else {}
    rows.append({
        "run": f"tutorial as printed (augmented, {args.baseline_epochs} ep)", **measured,
        "val_accuracy": baseline.get("val_accuracy", []), "tflite_mb": baseline.get("tflite_bytes", 0) / 1e6,
        "fit_seconds": baseline.get("fit_seconds"),
    })
    print(_row_text(rows[-1]), flush=True)

    for model, epochs in (("tutorial", args.epochs[0]), ("tutorial-augmented", args.epochs[1])):
        run_dir = args.out / f"run-{model}"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: remove it or pass another --out")
        petal = [sys.executable, "-m", "petal"]
        measured = run_measured(
            petal + ["train", args.data, "--model", model, "--epochs", str(epochs), "--out", str(run_dir), "--cache-dir", str(cache)],
            args.out / f"train-{model}.log",
        )
        exported = run_measured(petal + ["export", str(run_dir), "--quantize", "float32"], args.out / f"export-{model}.log")
        history = read_history(run_dir / "history.csv")
        report_path = run_dir / "export" / "report.json"
        parity = json.loads(report_path.read_text())["variants"][0] if report_path.exists() else {}
        log_text = (args.out / f"train-{model}.log").read_text()
        rows.append({
            "run": f"petal {model} ({epochs} ep)", **measured,
            "val_accuracy": [float(r["val_accuracy"]) for r in history],
            "fit_seconds": sum(float(r["seconds"]) for r in history),
            "tflite_mb": parity.get("file_bytes", 0) / 1e6,
            "export_returncode": exported["returncode"],
            "parity": parity,
            "decode_log": [line for line in log_text.splitlines() if line.startswith("decoded ")],
        })
        print(_row_text(rows[-1]), flush=True)

    report = {"machine": machine(), "data": args.data, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    print()
    print(f"machine: {report['machine']}")
    print("| run | final val acc (best) | fit s | wall s (process) | peak RSS MB | .tflite MB | export parity (agreement, max abs dlogit) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        acc = row["val_accuracy"]
        parity = row.get("parity") or {}
        parity_text = f"{parity['top1_agreement']:.2%}, {parity['max_abs_logit_diff']:.1e}" if parity else "-"
        final = f"{acc[-1]:.3f} ({max(acc):.3f})" if acc else "failed"
        fit = f"{row['fit_seconds']:.0f}" if row.get("fit_seconds") else "-"
        print(f"| {row['run']} | {final} | {fit} | {row['wall_seconds']:.0f} | {row['peak_rss_mb']:.0f} | {row['tflite_mb']:.2f} | {parity_text} |")
    print()
    for row in rows:
        print(f"{row['run']}: val accuracy per epoch: " + " ".join(f"{a:.3f}" for a in row["val_accuracy"]))
        for line in row.get("decode_log", []):
            print(f"    {line}")


def _row_text(row: dict) -> str:
    acc = row["val_accuracy"]
    return f"{row['run']}: exit {row['returncode']}, {row['wall_seconds']:.0f} s, peak RSS {row['peak_rss_mb']:.0f} MB, final val acc {acc[-1] if acc else 'n/a'}"


if __name__ == "__main__":
    main()
