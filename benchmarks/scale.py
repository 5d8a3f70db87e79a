"""Past one process, on Ray: batch prediction and data-parallel training, each beside its one-process baseline.

    python benchmarks/scale.py [--data ../shared/datasets/flower_photos]
                               [--model benchmarks/results/transfer/run-petal-resnet/export/model-int8.tflite]
                               [--out benchmarks/results/scale] [--epochs 3]

1. Batch prediction of the default model's int8 .tflite over flower_photos listed once and ten times
   (manifests of 3,670 and 36,700 entries): `petal predict-batch` with 1 and 2 workers on a local Ray
   cluster, each in a fresh process that reports its own (the driver's) peak RSS; against what `petal
   predict` does, in one process, over the same manifest. Rates both over the whole command (cluster
   start included) and over the prediction alone.
2. `petal train` of the default model for --epochs epochs in one process and with --workers 2, on the
   tutorial's split: seconds per epoch and validation accuracy.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, read_history, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent

BATCH_RUN = """
import json, resource, sys, time
from petal.scale.predict_batch import predict_batch
started = time.perf_counter()
result = predict_batch(sys.argv[1], sys.argv[2], sys.argv[3], workers=int(sys.argv[4]))
print(json.dumps({"predicted": result.predicted, "failed": result.failed, "wall_seconds": time.perf_counter() - started,
                  "predict_seconds": result.seconds, "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# What `petal predict MODEL FILES...` does (petal.cli.commands.cmd_predict), over a manifest too long for a command line.
ONE_PROCESS_RUN = """
import json, sys, time
started = time.perf_counter()
from petal.runtime.predict import Predictor
predictor = Predictor.load(sys.argv[1])
paths = open(sys.argv[2]).read().split()
loop = time.perf_counter()
count = sum(1 for _ in predictor.predict(paths, top_k=3))
end = time.perf_counter()
print(json.dumps({"files": count, "wall_seconds": end - started, "predict_seconds": end - loop}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--model", default=str(HERE / "results" / "transfer" / "run-petal-resnet" / "export" / "model-int8.tflite"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"{args.model}: no such .tflite; run benchmarks/transfer.py first or pass --model")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: remove it or pass another --out")
    args.out.mkdir(parents=True)

    photos = sorted(str(p) for p in Path(args.data).rglob("*.jpg"))
    manifests = {}
    for repeat in (1, 10):
        manifests[repeat] = args.out / f"manifest-{len(photos) * repeat}.txt"
        manifests[repeat].write_text("\n".join(photos * repeat) + "\n")

    baselines = []
    for repeat in (1, 10):
        done = subprocess.run([sys.executable, "-c", ONE_PROCESS_RUN, args.model, str(manifests[repeat])], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"one-process prediction failed:\n{done.stderr[-3000:]}")
        baselines.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"petal predict, one process: {baselines[-1]['files']} files in {baselines[-1]['wall_seconds']:.1f} s", flush=True)

    batch_rows = []
    for repeat in (1, 10):
        for workers in (1, 2):
            out = args.out / f"batch-{repeat}x-{workers}w"
            done = subprocess.run([sys.executable, "-c", BATCH_RUN, args.model, str(manifests[repeat]), str(out), str(workers)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"predict-batch failed:\n{done.stderr[-3000:]}")
            row = {"entries": len(photos) * repeat, "workers": workers, **json.loads(done.stdout.strip().splitlines()[-1])}
            batch_rows.append(row)
            print(f"predict-batch {row['entries']} entries, {workers} workers: {row['wall_seconds']:.1f} s, "
                  f"driver {row['driver_peak_rss_mb']:.0f} MB", flush=True)

    train_rows = []
    petal = [sys.executable, "-m", "petal", "train", args.data, "--epochs", str(args.epochs), "--cache-dir", str(args.out / "cache")]
    for name, extra in (("one process", []), ("2 Ray workers", ["--workers", "2"])):
        run_dir = args.out / ("train-" + name.replace(" ", "-"))
        measured = run_measured(petal + extra + ["--out", str(run_dir)], args.out / f"{run_dir.name}.log")
        history = read_history(run_dir / "history.csv")
        train_rows.append({"run": name, **measured, "history": history,
                           "parallel": json.loads((run_dir / "parallel.json").read_text()) if (run_dir / "parallel.json").exists() else {}})
        print(f"train {name}: exit {measured['returncode']}, {measured['wall_seconds']:.0f} s", flush=True)

    results = {"machine": machine(), "model": args.model, "one_process": baselines, "batch": batch_rows, "train": train_rows}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nmachine: {results['machine']}\nmodel: {args.model}\n")
    print("wall: the whole command, start-up (and Ray's cluster) included; predicting: the prediction loop alone\n")
    print("| command | entries | workers | wall time | img/s (wall) | img/s (predicting) | vs one process (predicting) | driver peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    one_rate = {b["files"]: b["files"] / b["predict_seconds"] for b in baselines}
    for b in baselines:
        print(f"| petal predict (one process) | {b['files']:,} | — | {b['wall_seconds']:.1f} s | {b['files'] / b['wall_seconds']:.0f} | "
              f"{one_rate[b['files']]:.0f} | 1.00x | — |")
    for row in batch_rows:
        rate = row["entries"] / row["predict_seconds"]
        print(f"| petal predict-batch | {row['entries']:,} | {row['workers']} | {row['wall_seconds']:.1f} s | "
              f"{row['entries'] / row['wall_seconds']:.0f} | {rate:.0f} | {rate / one_rate[row['entries']]:.2f}x | {row['driver_peak_rss_mb']:.0f} |")
    print()
    print("| training (default model) | replicas | global batch | s/epoch (mean) | val accuracy per epoch | wall time |")
    print("|---|---|---|---|---|---|")
    for row in train_rows:
        history = row["history"]
        seconds = sum(r["seconds"] for r in history) / max(1, len(history))
        accuracies = " ".join(f"{r['val_accuracy']:.3f}" for r in history)
        print(f"| {row['run']} | {row['parallel'].get('replicas', '?')} | {row['parallel'].get('global_batch_size', '?')} | "
              f"{seconds:.1f} | {accuracies} | {row['wall_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
