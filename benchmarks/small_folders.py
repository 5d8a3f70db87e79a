"""Does the default's fine-tuning help or hurt on a small folder? Measured on photos no run sees.

    python benchmarks/small_folders.py [--data ../shared/datasets/flower_photos] [--per-class 10 25 50]
                                       [--draws 3] [--test-per-class 100] [--out benchmarks/results/small_folders]

A fixed test folder of --test-per-class photos of each class is set aside first (seed 0); then, for each size
and draw, --per-class other photos of each class are drawn (seed = draw) and copied to a folder of their own,
and two runs train on it, each as its own process, on the same split (petal's default, 80/20, seed 123):
  1. petal train DIR                         (the default: head on embeddings, then the top blocks fine-tuned)
  2. petal train DIR --fine-tune-blocks 0    (the head alone)
then `petal evaluate RUN --data TEST` measures each saved (final-epoch) model on the test folder. Prints one
table (validation and test accuracy per size, the mean over draws) and writes results.json.
"""

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = {"default (fine-tuned)": [], "head only": ["--fine-tune-blocks", "0"]}


def copy_photos(paths: list[Path], root: Path) -> Path:
    for path in paths:
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "flower_photos")
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "small_folders")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: remove it or pass another --out")

    classes = sorted(p for p in args.data.iterdir() if p.is_dir())
    photos = {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes}
    rng = random.Random(0)
    test, pool = [], {}
    for name, paths in photos.items():
        shuffled = rng.sample(paths, len(paths))
        test += shuffled[:args.test_per_class]
        pool[name] = shuffled[args.test_per_class:]
    test_dir = copy_photos(test, args.out / "test")

    petal = [sys.executable, "-m", "petal"]
    cache = ["--cache-dir", str(args.out / "cache")]
    rows = []
    for size in args.per_class:
        for draw in range(args.draws):
            draw_rng = random.Random(draw)
            folder = copy_photos([p for paths in pool.values() for p in draw_rng.sample(paths, size)], args.out / f"data-{size}-{draw}")
            for config, options in CONFIGS.items():
                run = args.out / f"run-{size}-{draw}-{'head' if options else 'default'}"
                trained = run_measured(petal + ["train", str(folder), *options, "--out", str(run), *cache], args.out / f"{run.name}.log")
                if trained["returncode"]:
                    raise SystemExit(f"training failed: see {args.out / (run.name + '.log')}")
                evaluation = args.out / f"{run.name}-test.json"
                with open(evaluation, "w") as out:
                    subprocess.run(petal + ["evaluate", str(run), "--data", str(test_dir), "--json"], stdout=out, check=True,
                                   stderr=subprocess.DEVNULL)
                validation = json.loads((run / "validation.json").read_text())
                row = {"per_class": size, "draw": draw, "config": config, "val_accuracy": validation["accuracy"],
                       "val_images": validation["images"], "test_accuracy": json.loads(evaluation.read_text())["accuracy"],
                       "train_seconds": round(trained["wall_seconds"], 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\n{machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; test: {len(test)} photos ({args.test_per_class} a class)")
    print("| photos a class | config | val accuracy (mean) | test accuracy (mean) | test accuracy per draw | train s (mean) |")
    print("|---|---|---|---|---|---|")
    for size in args.per_class:
        for config in CONFIGS:
            these = [r for r in rows if r["per_class"] == size and r["config"] == config]
            means = {key: sum(r[key] for r in these) / len(these) for key in ("val_accuracy", "test_accuracy", "train_seconds")}
            per_draw = ", ".join(f"{r['test_accuracy']:.3f}" for r in these)
            print(f"| {size} | {config} | {means['val_accuracy']:.3f} | {means['test_accuracy']:.3f} | {per_draw} | "
                  f"{means['train_seconds']:.0f} |")
    (args.out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
