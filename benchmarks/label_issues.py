"""Label issues, near copies and outliers on flower_photos (`petal data --label-issues`, petal.training.label_issues).

    python benchmarks/label_issues.py [--data ../shared/datasets/flower_photos] [--work /tmp/petal-label-issues]
                                      [--out benchmarks/results/label_issues] [--sweep]

1. Label noise: a copy of the data under --work with a seeded random 3% of the photos (110 of 3,670) moved
   to another class, chosen at random. `petal data COPY --label-issues --json` runs once from a cold cache
   (timed, as a user runs it); then recall of the moved photos among the top 110 label-issue findings, and
   how many of all flagged photos were moved. The flagged photos that were not moved go to a contact sheet
   (noisy-not-moved.png) for a person to judge.
   --sweep: the same measures for other heads and cleanlab filters, on the cached embeddings of this copy and of
   DRAWS more seeded noise draws (relabelled in memory).
2. The untouched folder: its top 30 label-issue findings and every outlier, with contact sheets.
3. Near copies: 50 seeded random photos, each re-encoded at JPEG quality 60, resized to half size and cropped
   by 5% (left and top), added beside their originals. For each threshold: how many of the 150 copies lie
   within it of their original (cosine distance between embeddings; Hamming distance between the doctor's
   64-bit difference hashes), and how many pairs of different originals do too.
Writes results.json and the PNGs to --out; prints the tables of docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
PETAL = str(Path(sys.executable).parent / "petal")
NOISE_FRACTION = 0.03
SEED = 2026
COPIES = 50
DISTANCES = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.12, 0.15)
HAMMING = (0, 2, 4, 6, 8, 10, 12)
DRAWS = 6  # in-memory noise draws beside the copy, for --sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "flower_photos")
    parser.add_argument("--work", type=Path, default=Path("/tmp/petal-label-issues"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "label_issues")
    parser.add_argument("--sweep", action="store_true", help="also measure other heads and filters, on more noise draws")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: noise,untouched,copies")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.out / "results.json"  # parts skipped keep their last results
    results = {**(json.loads(saved.read_text()) if saved.exists() else {}), "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    skip = set(args.skip.split(","))
    if "noise" not in skip:
        results["noise"] = label_noise(args)
    if "untouched" not in skip:
        results["untouched"] = untouched(args)
    if not {"noise", "untouched"} & skip:
        # flower_photos files some photos wrongly itself (DATA-DOCTOR.md judges its top 30): those rank among the
        # noisy copy's top findings too, beside the moved ones. Recall again with them set aside.
        preexisting = {row[0] for row in results["untouched"]["top30"]}
        noise = results["noise"]
        ranked = [p for p in noise["flagged_paths"] if p not in preexisting][: noise["moved"]]
        noise["preexisting_in_top"] = len(set(noise["flagged_paths"][: noise["moved"]]) & preexisting)
        noise["recall_top_moved_beside_preexisting"] = round(len(set(ranked) & set(noise["moved_paths"])) / noise["moved"], 4)
        print(f"label noise: {noise['preexisting_in_top']} of the top {noise['moved']} are the untouched folder's own top-30 findings; "
              f"with those set aside, recall {noise['recall_top_moved_beside_preexisting']}")
    if "copies" not in skip:
        results["copies"] = near_copies(args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")


def noisy_copy(data: Path, target: Path) -> dict[str, str]:
    """Copy `data` to `target` with NOISE_FRACTION of its photos moved to a random other class; returns
    {new path: true class}."""
    from petal.data.index import index_folder

    record = target.with_suffix(".moved.json")
    if record.exists() and target.exists():
        return json.loads(record.read_text())
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(data, target)
    folder = index_folder(target)
    rng = np.random.default_rng(SEED)
    count = round(NOISE_FRACTION * len(folder))
    moved = {}
    for i in rng.permutation(len(folder)):
        if len(moved) == count:
            break
        path, label = folder.paths[i], folder.labels[i]
        wrong = folder.class_names[rng.choice([c for c in range(len(folder.class_names)) if c != label])]
        new = f"{wrong}/{Path(path).name}"
        if (target / new).exists():
            continue
        shutil.move(target / path, target / new)
        moved[new] = folder.class_names[label]
    record.write_text(json.dumps(moved, indent=2))
    return moved


def label_noise(args) -> dict:
    from petal.data.split import load_split
    from petal.training.label_issues import find_issues, save_contact_sheet

    noisy = args.work / "noisy"
    moved = noisy_copy(args.data, noisy)
    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache: decode and embed everything
    started = time.perf_counter()
    command = [PETAL, "data", str(noisy), "--label-issues", "--json", "--cache-dir", str(cache), "--contact-sheet", str(args.out / "noisy-sheet.png")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    report = json.loads(done.stdout)
    issues = [f for f in report["findings"] if f["kind"] == "label-issue"]  # worst first
    flagged = [f["path"] for f in issues]
    top = set(flagged[: len(moved)])
    result = {
        "command": " ".join(["petal", *command[1:]]), "cold_cache_seconds": round(wall, 1), "moved": len(moved),
        "stages": report["label_issues"]["seconds"], "cross_validated_accuracy": report["label_issues"]["cross_validated_accuracy"],
        "folds": report["label_issues"]["folds"], "flagged": len(flagged),
        "recall_top_moved": round(len(top & set(moved)) / len(moved), 4),
        "flagged_that_were_moved": len(set(flagged) & set(moved)),
        "suggested_true_class": sum(1 for f in issues if f["path"] in moved and f["suggested"] == moved[f["path"]]),
        "outliers": [f["path"] for f in report["findings"] if f["kind"] == "outlier"],
        "flagged_paths": flagged,  # worst first
        "moved_paths": sorted(moved),
    }
    print(f"label noise: {json.dumps(result)}")
    found = find_issues(load_split(noisy), cache_dir=cache)  # warm: the same findings, with the images for the sheets
    not_moved = [f for f in found.of_kind("label-issue") if f.path not in moved]
    save_contact_sheet(found, args.out / "noisy-not-moved.png", findings=not_moved, limit=120, columns=8)
    result["flagged_not_moved"] = [[f.path, f.given, f.suggested, round(f.score, 4)] for f in not_moved]
    missed = [p for p in moved if p not in top]
    result["missed"] = [[p, moved[p], round(float(found.label_quality[found.paths.index(p)]), 4)] for p in missed]
    if args.sweep:
        result["sweep"] = sweep(found, moved, cache)
    return result


def sweep(found, moved: dict[str, str], cache: Path) -> list[dict]:
    """Heads and cleanlab filters on the same embeddings: recall of the moved photos among the top len(moved)
    findings, and flagged counts; on this copy, then on DRAWS more noise draws made in memory (a moved photo's
    embedding is the same in any class folder, so moving it is relabelling its row)."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from petal.training.label_issues import out_of_sample_probabilities, power_normalise

    features = _embeddings(found, cache)
    given = found.labels
    truth = np.array([found.class_names.index(moved[p]) if p in moved else given[i] for i, p in enumerate(found.paths)])

    def cv(head, x, labels):
        return cross_val_predict(head, x, labels, cv=StratifiedKFold(5, shuffle=True, random_state=123), method="predict_proba")

    heads = {  # name -> labels -> out-of-sample probabilities
        "raw, C=0.003 (the default until 2026-11-30 evening)": lambda y: cv(LogisticRegression(C=0.003, max_iter=3000), features, y),
        "power-normalised, C=3": lambda y: cv(LogisticRegression(C=3.0, max_iter=3000), power_normalise(features), y),
        "power-normalised, C=10": lambda y: cv(LogisticRegression(C=10.0, max_iter=3000), power_normalise(features), y),
        "power-normalised, C=3, and a 20-nearest-neighbour vote (the default)": lambda y: out_of_sample_probabilities(features, y),
    }
    draws = [("this copy", given, np.array([p in moved for p in found.paths]))]
    for seed in range(1, DRAWS + 1):
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(truth))[: len(moved)]
        labels = truth.copy()
        for i in chosen:
            labels[i] = rng.choice([c for c in range(len(found.class_names)) if c != truth[i]])
        draws.append((f"draw {seed}", labels, np.isin(np.arange(len(truth)), chosen)))
    rows = []
    for name, head in heads.items():
        row = {"head": name, "draws": {}}
        for draw, labels, is_moved in draws:
            started = time.perf_counter()
            probs = head(labels)
            quality = probs[np.arange(len(labels)), labels]
            cell = {"seconds": round(time.perf_counter() - started, 1), "accuracy": round(float((probs.argmax(1) == labels).mean()), 4)}
            for filter_by in ("both", "prune_by_class", "prune_by_noise_rate"):
                flagged = np.flatnonzero(find_label_issues(labels, probs, filter_by=filter_by))
                top = flagged[np.argsort(quality[flagged], kind="stable")][: len(moved)]
                cell[filter_by] = {"flagged": len(flagged), "moved": int(is_moved[flagged].sum()),
                                   "recall_top_moved": round(float(is_moved[top].sum() / len(moved)), 4)}
            row["draws"][draw] = cell
        for filter_by in ("both", "prune_by_class", "prune_by_noise_rate"):
            row[f"mean_recall_{filter_by}"] = round(float(np.mean([c[filter_by]["recall_top_moved"] for c in row["draws"].values()])), 4)
        print(f"sweep: {json.dumps(row)}")
        rows.append(row)
    return rows


def _embeddings(found, cache: Path) -> np.ndarray:
    from petal.data.index import ImageFolder
    from petal.training.label_issues import embed

    folder = ImageFolder(found.images.folder.root, found.class_names, tuple(found.paths), found.labels.astype(np.int32))
    _, rows = embed(folder, cache_dir=cache)
    return rows.gather(np.arange(len(rows))).astype(np.float64)


def untouched(args) -> dict:
    from petal.data.split import load_split
    from petal.training.label_issues import find_issues, save_contact_sheet

    started = time.perf_counter()
    found = find_issues(load_split(args.data), cache_dir=args.work / "cache")
    seconds = time.perf_counter() - started
    issues = found.of_kind("label-issue")
    save_contact_sheet(found, args.out / "flower_photos-top30.png", findings=issues[:30], limit=30, columns=6)
    save_contact_sheet(found, args.out / "flower_photos-outliers.png", findings=found.of_kind("outlier"), limit=60, columns=6)
    near = [[f.kind, f.path, f.detail] for f in found.findings if f.kind.startswith("near-duplicate")]
    result = {"seconds": round(seconds, 1), "flagged": len(issues), "cross_validated_accuracy": round(found.cross_validated_accuracy, 4),
              "top30": [[f.path, f.given, f.suggested, round(f.score, 4)] for f in issues[:30]],
              "outliers": [[f.path, f.given, f.suggested, round(f.score, 4), round(f.distance, 3)] for f in found.of_kind("outlier")],
              "near_duplicates": near}
    print(f"untouched: flagged {len(issues)}, outliers {len(result['outliers'])}, near duplicates {len(near)}")
    return result


def make_copies(data: Path, target: Path) -> list[tuple[str, str, str]]:
    """`data` with COPIES seeded random photos each re-encoded, halved and cropped beside it; (copy, original, how)."""
    from petal.data.index import index_folder

    record = target.with_suffix(".copies.json")
    if record.exists() and target.exists():
        return [tuple(r) for r in json.loads(record.read_text())]
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(data, target)
    folder = index_folder(data)
    made = []
    for i in np.random.default_rng(SEED + 1).choice(len(folder), COPIES, replace=False):
        original = folder.paths[i]
        stem = str(Path(original).with_suffix(""))
        with Image.open(data / original) as image:
            image = image.convert("RGB")
            w, h = image.size
            image.save(target / f"{stem}__q60.jpg", quality=60)
            image.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(target / f"{stem}__half.jpg", quality=90)
            image.crop((round(0.05 * w), round(0.05 * h), w, h)).save(target / f"{stem}__crop5.jpg", quality=90)
        made += [(f"{stem}__{how}.jpg", original, how) for how in ("q60", "half", "crop5")]
    record.write_text(json.dumps(made))
    return made


def near_copies(args) -> dict:
    from cleanlab.outlier import OutOfDistribution

    from petal.data.index import ImageFolder, index_folder
    from petal.training.label_issues import NEIGHBOURS, difference_hashes, embed, near_copy_pairs
    from petal.training.plots import save_image_grid

    target = args.work / "copies"
    made = make_copies(args.data, target)
    folder = index_folder(target)
    images, rows = embed(folder, cache_dir=args.work / "cache")
    row_of = {p: i for i, p in enumerate(images.paths)}
    features = rows.gather(np.arange(len(rows))).astype(np.float64)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    hashes = dict(zip(images.paths, (int(h) for h in difference_hashes(images))))  # as label_issues computes them
    copy_distance = {c: float(1 - unit[row_of[c]] @ unit[row_of[o]]) for c, o, _ in made}
    copy_hamming = {c: bin(hashes[c] ^ hashes[o]).count("1") for c, o, _ in made}
    # every pair of different originals (byte-identical ones are exact duplicates, not near copies)
    originals = [row_of[p] for p in ImageFolder(target, folder.class_names, folder.paths, folder.labels).paths if "__" not in p]
    sub = unit[originals]
    distance = 1 - sub @ sub.T
    keys = np.array([images.keys[i] for i in originals])
    upper = np.triu(np.ones_like(distance, dtype=bool), 1) & (keys[:, None] != keys[None, :])
    pair_i, pair_j = np.nonzero(upper & (distance < max(DISTANCES)))
    original_hashes = np.array([hashes[images.paths[i]] for i in originals], dtype=np.uint64)
    table = []
    for t in DISTANCES:
        found = {how: sum(1 for c, _, h in made if h == how and copy_distance[c] < t) for how in ("q60", "half", "crop5")}
        false = int(((distance < t) & upper).sum())
        table.append({"cosine_distance_below": t, **found, "pairs_of_originals": false})
    hamming_table = []
    xor = original_hashes[:, None] ^ original_hashes[None, :]
    bits = np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(-1)
    for r in HAMMING:
        found = {how: sum(1 for c, _, h in made if h == how and copy_hamming[c] <= r) for how in ("q60", "half", "crop5")}
        hamming_table.append({"hamming_at_most": r, **found, "pairs_of_originals": int(((bits <= r) & upper).sum())})
    # the rule petal applies (petal.training.label_issues.near_copy_pairs) on the nearest-neighbour graph it builds
    ood = OutOfDistribution(params={"k": NEIGHBOURS})
    ood.fit_score(features=features, verbose=False)
    started = time.perf_counter()
    linked = {(min(i, j), max(i, j)) for i, j, _, _ in near_copy_pairs(images, features, *ood.params["knn"].kneighbors())}
    rule_seconds = time.perf_counter() - started
    found = {how: sum(1 for c, o, h in made if h == how and tuple(sorted((row_of[c], row_of[o]))) in linked) for how in ("q60", "half", "crop5")}
    original_rows = set(originals)
    linked_originals = sorted((images.paths[i], images.paths[j]) for i, j in linked if i in original_rows and j in original_rows)
    rule = {"rule": "petal's (near_copy_pairs)", **found, "pairs_of_originals": len(linked_originals), "seconds": round(rule_seconds, 1),
            "pairs": linked_originals}
    if linked_originals:
        pictures = images.gather(np.array([row_of[p] for pair in linked_originals[:40] for p in pair]))
        save_image_grid(pictures, [p for pair in linked_originals[:40] for p in pair], args.out / "near-copy-pairs-petal-rule.png", columns=4)
    order = np.argsort(distance[pair_i, pair_j])
    pairs = [[images.paths[originals[pair_i[k]]], images.paths[originals[pair_j[k]]], round(float(distance[pair_i[k], pair_j[k]]), 4),
              int(bits[pair_i[k], pair_j[k]])] for k in order]
    shown = pairs[:40]
    if shown:
        pictures = images.gather(np.array([row_of[p] for a, b, _, _ in shown for p in (a, b)]))
        titles = [f"{p}\n{d:.3f} / {h} bits" for a, b, d, h in shown for p in (a, b)]
        save_image_grid(pictures, titles, args.out / "near-copy-pairs-of-originals.png", columns=4)
    result = {"copies": len(made), "petal_rule": rule, "table": table, "hamming_table": hamming_table, "pairs_of_originals": pairs,
              "worst_copy_distance": {how: round(max(copy_distance[c] for c, _, h in made if h == how), 4) for how in ("q60", "half", "crop5")},
              "worst_copy_hamming": {how: max(copy_hamming[c] for c, _, h in made if h == how) for how in ("q60", "half", "crop5")}}
    print(f"near copies: {json.dumps({k: v for k, v in result.items() if k != 'pairs_of_originals'})}")
    print("petal's rule found: " + ", ".join(f"{how} {found[how]} of {COPIES}" for how in found)
          + f"; pairs of originals linked: {len(linked_originals)} ({rule_seconds:.1f} s)")
    return result


if __name__ == "__main__":
    main()
