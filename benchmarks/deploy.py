"""Every LiteRT variant of the tutorial model and of petal's default model, checked against Keras.

    python benchmarks/deploy.py [--data ../shared/datasets/flower_photos] [--out benchmarks/results/deploy]
                                [--run tutorial=RUN_DIR] [--run MODEL=RUN_DIR]

For each of `tutorial` and the default model: trains it with its default settings on the tutorial's split
(or takes a finished run folder given with --run), then `petal export` makes float32, float16, dynamic
and int8 and compares each with Keras on the whole validation split. The reference row is the tutorial's
own conversion (`tf.lite.TFLiteConverter.from_keras_model`, as its last section does) of the same
tutorial model, measured the same way. Prints one table; writes results.json.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "flower_photos"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "deploy")
    parser.add_argument("--run", action="append", default=[], metavar="MODEL=RUN_DIR", help="use a finished run instead of training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from petal.registry import DEFAULT_MODEL

    given = dict(item.split("=", 1) for item in args.run)
    petal = [sys.executable, "-m", "petal"]
    rows, runs = [], {}
    for model in dict.fromkeys(("tutorial", DEFAULT_MODEL)):
        run_dir = Path(given.get(model, args.out / f"run-{model}"))
        if model not in given:
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists: remove it, pass --run {model}={run_dir}, or another --out")
            trained = run_measured(petal + ["train", args.data, "--model", model, "--out", str(run_dir),
                                            "--cache-dir", str(args.out / "decode-cache")], args.out / f"train-{model}.log")
            if trained["returncode"] != 0:
                raise SystemExit(f"training {model} failed: see {args.out / f'train-{model}.log'}")
        exported = run_measured(petal + ["export", str(run_dir)], args.out / f"export-{model}.log")
        report = json.loads((run_dir / "export" / "report.json").read_text())
        runs[model] = run_dir
        rows.append({"model": model, "export_returncode": exported["returncode"], "report": report})
        print(f"{model}: export exit {exported['returncode']}, {exported['wall_seconds']:.0f} s", flush=True)

    reference = tutorial_own_tflite(runs["tutorial"])
    results = {"machine": machine(), "data": args.data, "rows": rows, "tutorial_own_tflite": reference}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nmachine: {results['machine']}\n")
    print("| model | variant | size MB | val acc | Δ acc (points) | top-1 agreement | max abs Δlogit | ms/img 1 thr | ms/img 2 thr | img/s 1 thr | img/s 2 thr | gate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(_row("tutorial", "the tutorial's own float32 (reference)", reference))
    for row in rows:
        report = row["report"]
        print(f"| {row['model']} | Keras | {report['keras_file_bytes'] / 1e6:.2f} | {report['keras_accuracy']:.4f} | | | | | | | | |")
        for variant in report["variants"]:
            print(_row(row["model"], variant["variant"], variant))


def tutorial_own_tflite(run_dir: Path) -> dict:
    """The tutorial's conversion of the same Keras model, compared and timed as petal's variants are."""
    import tensorflow as tf

    from petal.config import ExportConfig
    from petal.run_folder import RunFolder
    from petal.training.export import compare_with_keras, measure_speed, speed_batch
    from petal.training.loop import decode_cache

    run = RunFolder(run_dir)
    model = run.load_model()
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    validation = decode_cache(run.config()).load(run.split("validation"))
    config = ExportConfig(variants=("float32",))
    _, (report,) = compare_with_keras(model, {"float32": tflite}, validation, config)
    report.speed = measure_speed(tflite, speed_batch(validation), config.threads)
    return asdict(report)


def _row(model: str, name: str, v: dict) -> str:
    speed = v["speed"]
    lat = lambda t: speed["latency_ms"].get(t, speed["latency_ms"].get(str(t)))  # noqa: E731 (JSON keys are strings)
    ips = lambda t: speed["images_per_second"].get(t, speed["images_per_second"].get(str(t)))  # noqa: E731
    gate = "pass" if v["passed"] else f"FAIL: {v['failure']}"
    return (f"| {model} | {name} | {v['file_bytes'] / 1e6:.2f} | {v['accuracy']:.4f} | {0.0 - 100 * v['accuracy_drop']:+.2f} | "
            f"{v['top1_agreement']:.2%} | {v['max_abs_logit_diff']:.1e} | {lat(1):.2f} | {lat(2):.2f} | {ips(1):.0f} | {ips(2):.0f} | {gate} |")


if __name__ == "__main__":
    main()
