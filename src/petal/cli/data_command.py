"""`petal data`: the folder's summary, the doctor's findings, and --label-issues with its contact sheet and moves."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from petal.cli.common import EXIT_PARTIAL, needs_extra, print_json, progress_bar, require
from petal.data import doctor
from petal.data.decode import decode_image
from petal.data.index import is_inside, resolved
from petal.data.quarantine import EXCLUDE_KINDS, check_quarantine, move_flagged, undo_move
from petal.data.split import load_split
from petal.errors import ConfigError, PetalError, counted, printable


def cmd_data(args) -> int:
    if args.undo_move:
        return _undo_move(args.undo_move)
    if args.data_dir is None:
        raise PetalError("petal data needs DIR (or --undo-move MANIFEST)")
    if args.move_to and not args.label_issues:
        raise PetalError("--move-to moves what --label-issues flags: pass --label-issues too")
    # named as petal train names it (absolute, links resolved), in errors and in the report
    split = load_split(resolved(args.data_dir), args.val_split, args.seed, args.split_method, layout=args.layout,
                            follow_links=args.follow_links)
    check_outputs(args, split.train.root)  # refused now, not after the embeddings
    started = time.perf_counter()
    report = doctor.examine(split, max_pixels=args.max_pixels, progress=None if args.json else progress_bar("examining"))
    seconds = time.perf_counter() - started
    extra = _label_issues(args, split, report) if args.label_issues else {}
    report = extra.pop("report", report)
    if args.json:
        print_json("data", {**report.to_json(), "unindexed_files": doctor.unindexed_files(args.data_dir), **extra})
        return 0
    _print_data_report(report, split, seconds, doctor, args)
    if args.label_issues:
        _print_label_issues(extra)
    grid_path = _grid_path(args)
    _save_sample_grid(split.train, set(report.unusable), grid_path)
    print(f"Sample grid: {grid_path}")
    return 0


def _print_data_report(report, split, seconds, doctor, args) -> None:
    print(f"Found {report.files} files belonging to {len(report.class_counts)} classes.")
    width = max(len(printable(name)) for name in report.class_counts)
    for name, count in report.class_counts.items():
        print(f"  {printable(name):<{width}}  {count:>7,}")
    print(f"  largest/smallest class: {report.imbalance:.2f}" + ("  (imbalanced: consider --class-weight auto)" if report.imbalance > 3 else ""))
    how = "as the folder gives it (train/, val/)" if split.method == "given" else (
        f"{split.method} split, validation fraction {split.val_split}, seed {split.seed}")
    test = f", and {len(split.test)} test files" if split.test is not None else ""
    print(f"Using {len(split.train)} files for training and {len(split.validation)} for validation{test} ({how}).")
    print(f"Examined {report.files} files in {seconds:.1f} s: {report.files - len(report.unusable)} usable, "
          f"{len(report.unusable)} left out of training.")
    if report.conversions:
        print("Converted to RGB: " + ", ".join(f"{k} ({n})" for k, n in sorted(report.conversions.items())))
    unindexed = doctor.unindexed_files(args.data_dir)
    if unindexed:
        print(printable(f"Not indexed (not an image extension): {counted(len(unindexed), 'file')}, e.g. {', '.join(unindexed[:3])}"))
    if not report.findings:
        print("No problems found.")
        return
    counts = {}
    for finding in report.findings:
        counts.setdefault(finding.kind, []).append(finding)
    print(f"{'finding':<30} {'severity':<8} {'files':>6}  meaning")
    for kind, found in counts.items():
        print(f"{kind:<30} {found[0].severity:<8} {len(found):>6}  {doctor.KINDS[kind][1]}")
    for kind, found in counts.items():
        shown = found if args.all else found[:5]
        for finding in shown:
            print(printable(f"  {kind}: {finding.path}" + (f"  ({finding.detail})" if finding.detail else "")))
        if len(found) > len(shown):
            print(f"  {kind}: ... and {len(found) - len(shown)} more (--all lists every file)")


def _save_sample_grid(folder, unusable: set[str], grid_path: Path) -> None:
    with needs_extra("petal data"):
        from petal.training import plots
    images, titles = [], []
    for path, label in zip(folder.paths, folder.labels):
        if path in unusable or not os.path.lexists(folder.absolute(path)):  # gone to the quarantine (--move-to)
            continue
        images.append(decode_image(folder.absolute(path), (180, 180)))
        titles.append(printable(folder.class_names[label]))
        if len(images) == 9:
            break
    plots.save_image_grid(images, titles, grid_path)


def _grid_path(args) -> Path:
    return Path(args.grid or f"{resolved(args.data_dir).name}-samples.jpg")


def _contact_sheet_path(args) -> Path:
    return Path(args.contact_sheet or f"{resolved(args.data_dir).name}-label-issues.png")


def check_outputs(args, root: Path) -> None:
    """--move-to, --move-kinds, and the files the command will write (the sample grid, the contact sheet), checked
    before any work: a file inside the data folder would be read as a photo, or overwrite one. Raises ConfigError."""
    if args.label_issues and args.move_to:
        check_quarantine(root, args.move_to, _move_kinds(args))
    elif _move_kinds(args) != EXCLUDE_KINDS:
        raise ConfigError("--move-kinds says what --move-to moves: pass --label-issues --move-to too")
    outputs = {"sample grid (--grid)": _grid_path(args)} if not args.json else {}
    if args.label_issues:
        outputs["contact sheet (--contact-sheet)"] = _contact_sheet_path(args)
    for what, path in outputs.items():
        if is_inside(path, root):
            raise ConfigError(f"{path}: the {what} must be written outside the data folder {root}")
        if path.is_dir() or not Path(os.path.abspath(path)).parent.is_dir():
            raise ConfigError(f"{path}: the {what} is a file to write, in a folder that exists")


def _move_kinds(args) -> tuple[str, ...]:
    return tuple(k.strip() for k in args.move_kinds.split(",") if k.strip())


def _label_issues(args, split, report) -> dict:
    """petal data --label-issues: find, merge into the doctor's report, draw the contact sheet, move if asked."""
    require(("cleanlab", "sklearn"), "petal data --label-issues")
    with needs_extra("petal data --label-issues"):  # TensorFlow loads here, its native notices hidden
        import keras  # noqa: F401  (label_issues imports it only when it embeds)

        from petal.training import label_issues
    kinds = _move_kinds(args)
    quiet = args.json
    found = label_issues.find_issues(split, cache_dir=args.cache_dir, max_pixels=args.max_pixels,
                                     progress=None if quiet else progress_bar("decoding"),
                                     embedding_progress=None if quiet else progress_bar("embedding", unit="batch"))
    sheet = _contact_sheet_path(args)
    try:
        written = label_issues.save_contact_sheet(found, sheet)
    except OSError as exc:
        raise PetalError(f"{sheet}: cannot write the contact sheet ({exc.strerror or exc})") from None
    extra = {"report": label_issues.merge(report, found),
             "label_issues": {**found.summary(), "contact_sheet": str(written) if written else None}}
    if args.move_to:
        manifest, moved = move_flagged(extra["report"].findings, split.train.root, args.move_to, kinds)
        extra["moved"] = {"files": moved, "to": str(args.move_to), "manifest": str(manifest), "undo": f"petal data --undo-move {manifest}"}
    return extra


# On flower_photos the head is right 87% of the time and 85% of what it flags deserves a look (docs/DATA-DOCTOR.md);
# a new user's 40 photos a class gave 78% and half false alarms.
TRUSTED_HEAD_ACCURACY = 0.85


def _print_label_issues(extra: dict) -> None:
    found = extra["label_issues"]
    counts = found["counts"]
    print(f"Label issues (Confident Learning, cleanlab): {counted(counts.get('label-issue', 0), 'label issue')}, "
          f"{counted(counts.get('outlier', 0), 'outlier')} among {found['images']} images; {found['folds']}-fold cross-validated "
          f"accuracy of the head (a linear head and a neighbour vote) on "
          f"{found['image_size'][0]}x{found['image_size'][1]} embeddings: {found['cross_validated_accuracy']:.3f} "
          f"({sum(found['seconds'].values()):.1f} s)")
    if found["cross_validated_accuracy"] < TRUSTED_HEAD_ACCURACY and counts.get("label-issue"):
        print(f"Caution: the head that judges the labels is right {100 * found['cross_validated_accuracy']:.0f}% of the time in "
              f"cross-validation: many of these findings may be its own mistakes (too few or too hard photos); treat them as suggestions")
    if found["contact_sheet"]:
        print(f"Contact sheet of the suspects: {found['contact_sheet']}")
    if "moved" in extra:
        moved = extra["moved"]
        print(f"Moved {counted(moved['files'], 'file')} to {moved['to']}; manifest {moved['manifest']}; undo: {moved['undo']}")


def _undo_move(manifest: Path) -> int:
    restored, already_back, problems = undo_move(manifest)
    if restored or not already_back:
        print(f"Moved {counted(restored, 'file')} back" +
              (f"; {already_back} {'was' if already_back == 1 else 'were'} back already" if already_back else ""))
    else:
        print(f"Nothing to move back: the {counted(already_back, 'file')} {manifest} lists {'is' if already_back == 1 else 'are'} "
              f"back in place already")
    for problem in problems:
        print(printable(f"petal: error: {problem}"), file=sys.stderr)
    return EXIT_PARTIAL if problems else 0
