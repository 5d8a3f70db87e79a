"""The `petal` command: parses arguments, calls the API, turns PetalError into one line and exit 2.

Heavy modules are imported inside each command, so `petal predict model.tflite` never loads
TensorFlow and a missing extra is reported in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

from petal.cluster import stop_orphans
from petal.config import AUGMENTATIONS, EXPORT_VARIANTS, INT8_IO_TYPES, LR_SCHEDULES, OPTIMIZERS, PRECISIONS, ExportConfig
from petal.errors import MissingDependencyError, PetalError
from petal.image import DEFAULT_MAX_PIXELS
from petal.native_log import native_log_silenced

log = logging.getLogger("petal")

# TrainConfig fields set by `petal train` flags of the same name; a flag not given leaves the model's recipe.
TRAIN_SETTINGS = (
    "epochs", "batch_size", "val_split", "seed", "split_method", "train_seed", "optimizer", "learning_rate", "weight_decay", "lr_schedule",
    "warmup_epochs", "label_smoothing", "augmentation", "mixup", "cutmix", "early_stopping", "test_time_flip", "precision",
    "class_weight",
    "deterministic", "max_pixels", "cache_dir", "weights", "fine_tune_blocks", "fine_tune_epochs", "fine_tune_learning_rate",
    "strategy", "workers", "lr_scaling", "layout", "follow_links", "exclude",
)

# Which optional extra brings which module, for the one-line "pip install 'petal-vision[...]'" message.
EXTRAS = {"train": ("tensorflow", "keras", "matplotlib", "tqdm", "cleanlab", "sklearn"), "serve": ("starlette", "uvicorn", "multipart"),
          "scale": ("ray", "pyarrow", "psutil")}

EXIT_ERROR = 2  # the command could not do its job
EXIT_PARTIAL = 1  # it did, but some inputs failed (e.g. unreadable images given to predict)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a class or file name the console cannot encode is escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    for chatty in ("absl", "tensorflow"):  # SavedModel notices ("Assets written to ...") during export
        logging.getLogger(chatty).setLevel(logging.ERROR)
    stop_orphans()  # Ray processes a killed petal command left behind; one line when there are any
    try:
        return args.handler(args) or 0
    except PetalError as exc:
        print(f"petal: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("petal: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petal", description="Image classification from a folder of photos, the tutorial way and better.")
    parser.add_argument("--version", action="version", version=f"petal {_version()}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="summarise a folder of class sub-folders and save a sample grid")
    data.add_argument("data_dir", metavar="DIR", nargs="?")
    _add_split_options(data)
    data.add_argument("--grid", type=Path, help="where to save the 3x3 sample grid (default: DIR-NAME-samples.png here)")
    data.add_argument("--json", action="store_true", help="print the full report as JSON (no grid)")
    data.add_argument("--all", action="store_true", help="list every file of every finding, not the first five")
    data.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help=f"images with more pixels are refused (default {DEFAULT_MAX_PIXELS:,})")
    issues = data.add_argument_group("label issues, near copies and outliers (docs/DATA-DOCTOR.md; needs petal-vision[train])")
    issues.add_argument("--label-issues", action="store_true",
                        help="also find photos filed under the wrong class, near copies and outliers, from the default "
                             "pretrained backbone's embeddings (cleanlab, Confident Learning)")
    issues.add_argument("--contact-sheet", type=Path, metavar="PNG",
                        help="where to save the suspects' contact sheet (default: DIR-NAME-label-issues.png here)")
    issues.add_argument("--cache-dir", help="decode and embedding cache, shared with petal train (default: $PETAL_CACHE_DIR or ~/.cache/petal)")
    issues.add_argument("--move-to", type=Path, metavar="QUARANTINE",
                        help="move (never delete) the flagged files there, keeping their class folders, with a manifest to undo it")
    issues.add_argument("--move-kinds", default="label-issue,outlier", metavar="KINDS",
                        help="comma-separated finding kinds --move-to moves (default: label-issue,outlier)")
    issues.add_argument("--undo-move", type=Path, metavar="MANIFEST", help="move the files a --move-to manifest lists back (no DIR needed)")
    data.set_defaults(handler=cmd_data)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'tutorial*'")
    models.set_defaults(handler=cmd_models)

    train = commands.add_parser("train", help="train a model and write a run folder")
    train.add_argument("data_dir", metavar="DIR")
    _add_train_options(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    train.set_defaults(handler=cmd_train)

    export = commands.add_parser("export", help="convert a run's model to LiteRT and check it against Keras")
    export.add_argument("run_dir", metavar="RUN_DIR")
    gate = ExportConfig  # its field defaults are the flags' defaults
    export.add_argument("--quantize", default=",".join(EXPORT_VARIANTS), metavar="VARIANTS",
                        help=f"comma-separated subset of {','.join(EXPORT_VARIANTS)} (default: all four)")
    export.add_argument("--int8-io", choices=INT8_IO_TYPES, default=gate.int8_io,
                        help="input/output tensor type of the int8 variant; uint8 or int8 for integer-only accelerators")
    export.add_argument("--calibration-images", type=int, default=gate.calibration_images,
                        help=f"training images that calibrate int8 (default {gate.calibration_images})")
    export.add_argument("--min-agreement", type=float, default=gate.min_float_agreement,
                        help=f"float32/float16 must pick Keras's class on this share of validation images (default {gate.min_float_agreement})")
    export.add_argument("--max-accuracy-drop", type=float, default=gate.max_accuracy_drop,
                        help=f"dynamic/int8 may lose at most this much accuracy against Keras (default {gate.max_accuracy_drop} = 1 point)")
    export.add_argument("--no-gate", dest="gate", action="store_false",
                        help="write variants that fail the parity gate too, and exit 0 (they are still reported as failed)")
    export.set_defaults(handler=cmd_export)

    evaluate = commands.add_parser("evaluate", help="per-class metrics, confusion matrix, calibration and worst mistakes")
    evaluate.add_argument("model", metavar="MODEL", help="a run folder or a .tflite (evaluated without TensorFlow)")
    evaluate.add_argument("--data", dest="data_dir", metavar="DIR",
                          help="a folder of class sub-folders named as the model's classes (default: the run's validation split)")
    evaluate.add_argument("--out", type=Path, help="where to write (default: RUN/evaluation/keras or RUN/evaluation/FILE-STEM)")
    evaluate.add_argument("--top-k", type=int, default=3)
    evaluate.add_argument("--mistakes", type=int, default=16, help="how many of the most confident mistakes to show (default 16)")
    evaluate.set_defaults(handler=cmd_evaluate)

    report = commands.add_parser("report", help="rebuild RUN_DIR/report.html, one self-contained page of the whole run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(handler=cmd_report)

    serve = commands.add_parser("serve", help="a local page to try the model on photos, and POST /predict (JSON)")
    serve.add_argument("model", metavar="MODEL", help="a .tflite (served without TensorFlow) or a run folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20, help="larger uploads get 413 (default 20)")
    serve.add_argument("--decodes", type=int, default=2, help="images decoded at once; bounds the server's memory (default 2)")
    serve.add_argument("--timeout", type=float, default=10, metavar="SECONDS",
                       help="a request not decoded and classified this long after its upload gets 503 (default 10)")
    serve.add_argument("--max-pixels", type=int, help="larger images get 413 (default: the model's limit)")
    serve.set_defaults(handler=cmd_serve)

    predict = commands.add_parser("predict", help="classify images with a run folder or a .tflite file")
    predict.add_argument("model", metavar="MODEL", help="a run folder or a .tflite written by petal export")
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(handler=cmd_predict)

    batch = commands.add_parser("predict-batch", help="classify a folder, glob or manifest of any size on Ray, into Parquet files")
    batch.add_argument("model", metavar="MODEL", help="a .tflite, or a run folder (its export/model-float32.tflite)")
    batch.add_argument("source", metavar="SOURCE",
                       help="a folder (searched recursively), a quoted glob, or a manifest: .txt, or .csv/.parquet with a 'path' column")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the Parquet parts go; a killed run resumes there")
    batch.add_argument("--address", help="a Ray cluster to join, e.g. 10.0.0.5:6379 (default: start a local one on 127.0.0.1)")
    batch.add_argument("--workers", type=int, default=2, help="LiteRT interpreters, one per Ray actor (default 2)")
    batch.add_argument("--batch-size", type=int, default=32, help="images per interpreter call (default 32)")
    batch.add_argument("--top-k", type=int, default=3)
    batch.add_argument("--part-size", type=int, default=512, help="files per Parquet part, the unit of work and of resuming (default 512)")
    batch.add_argument("--overwrite", action="store_true", help="replace DIR's predictions of another model or source")
    batch.add_argument("--dashboard", action="store_true", help="start the local cluster with Ray's dashboard")
    batch.set_defaults(handler=cmd_predict_batch)

    demo = commands.add_parser("demo", help="the whole workflow (data, train, export, predict) on the bundled sample")
    demo.add_argument("--data", dest="data_dir", help="a folder of class sub-folders (default: the bundled flower sample)")
    _add_train_options(demo)
    demo.set_defaults(handler=cmd_demo)
    return parser


def _add_split_options(parser):
    parser.add_argument("--val-split", type=float, default=0.2, help="fraction held out for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the split, and of training unless --train-seed (default 123)")
    parser.add_argument(
        "--split", dest="split_method", choices=("keras", "stratified"), default="keras",
        help="'keras': the files image_dataset_from_directory picks (default); 'stratified': the same fraction of every class",
    )
    parser.add_argument("--layout", choices=("auto", "split", "classes"), default="auto",
                        help="'split': DIR holds train/ and val/ (or validation/), each with the class sub-folders; "
                             "'classes': every sub-folder is a class, whatever its name (Keras's reading); "
                             "'auto' (default): split when only train/, val/ and test/ sub-folders hold class folders, "
                             "refused when the tree could be read both ways")
    parser.add_argument("--follow-links", action="store_true", default=False,
                        help="follow symlinked sub-folders inside class folders (each real folder once); "
                             "by default they are named in a warning and left out, as Keras's default does")


def _add_train_options(parser):
    _add_split_options(parser)
    recipe = " (default: the model's recipe, see docs/TRAINING.md)"
    parser.add_argument("--model", default=None, help="a name from `petal models` (default: mobilenet-v2, pretrained; petal-resnet trains from scratch)")
    parser.add_argument("--train-seed", type=int, help="seed of weights, shuffling and augmentation (default: --seed); the split keeps --seed")
    parser.add_argument("--epochs", type=int, help="epochs to train (pretrained backbones: the head's, on cached embeddings)" + recipe)
    parser.add_argument("--batch-size", type=int, help="images per step" + recipe)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="model input size" + recipe)
    parser.add_argument("--train-image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="size of the random training crops, if smaller than --image-size: faster epochs" + recipe)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="adam or adamw" + recipe)
    parser.add_argument("--learning-rate", type=float, help="peak learning rate" + recipe)
    parser.add_argument("--weight-decay", type=float, help="decoupled weight decay, adamw only" + recipe)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant or cosine decay" + recipe)
    parser.add_argument("--warmup-epochs", type=int, help="epochs of linear learning-rate warm-up" + recipe)
    parser.add_argument("--label-smoothing", type=float, help="e.g. 0.1" + recipe)
    parser.add_argument("--augmentation", choices=tuple(AUGMENTATIONS), help="; ".join(f"{k}: {v}" for k, v in AUGMENTATIONS.items()).replace("%", "%%"))
    parser.add_argument("--mixup", type=float, help="MixUp alpha, 0 = off" + recipe)
    parser.add_argument("--cutmix", type=float, help="CutMix factor in 0..1 (each batch mixes with Beta(a, a), a drawn from 0..factor), 0 = off" + recipe)
    parser.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                        help="stop after PATIENCE epochs without a better val accuracy and keep the best weights; 0 = off")
    parser.add_argument("--test-time-flip", action=argparse.BooleanOptionalAction,
                        help="the saved model averages its predictions over each image and its mirror image "
                             "(twice the inference time)" + recipe)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="auto: bfloat16 on CPUs with AMX/AVX-512 BF16, float16 on GPUs, else float32" + recipe)
    parser.add_argument("--class-weight", choices=("none", "auto"),
                        help="'auto' weights the loss by inverse class frequency, for imbalanced folders")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="reproducible to the last digit: same seed and data, same history")
    parser.add_argument("--max-pixels", type=int, help=f"images with more pixels are left out (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--cache-dir", help="decode and embedding cache (default: $PETAL_CACHE_DIR or ~/.cache/petal)")
    parser.add_argument("--out", type=Path, help="run folder to write (default: runs/MODEL-TIMESTAMP)")
    parser.add_argument("--exclude", metavar="FILE",
                        help="leave these files out of the split (the rest keep their side): the JSON of `petal data --label-issues "
                             "--json` (its label-issue and outlier paths) or a text file of paths, one per line")
    parallel = parser.add_argument_group("data-parallel training (docs/SCALE.md)")
    parallel.add_argument("--workers", type=int, help="train on N Ray Train workers (MultiWorkerMirroredStrategy); needs petal-vision[scale]")
    parallel.add_argument("--address", help="the Ray cluster of --workers, e.g. 10.0.0.5:6379 (default: a local one on 127.0.0.1)")
    parallel.add_argument("--strategy", choices=("single", "mirrored"),
                          help="mirrored: every local GPU (MirroredStrategy), in this process (default single)")
    parallel.add_argument("--lr-scaling", choices=("linear", "none"),
                          help="with N replicas the peak learning rate is multiplied by N ('linear', default) or not")
    pretrained = parser.add_argument_group("pretrained backbones (mobilenet-*, efficientnet*: see `petal models`)")
    pretrained.add_argument("--weights", metavar="FILE",
                            help="backbone weights file (default: Keras's ImageNet file in ~/.keras/models, downloaded when missing; "
                                 "for mobilenet-v2, the copy shipped with petal when Keras has none)")
    pretrained.add_argument("--fine-tune-blocks", type=int, metavar="N",
                            help="after the head (--epochs, on cached embeddings), also train the top N blocks; 0: off (default: the model's recipe)")
    pretrained.add_argument("--fine-tune-epochs", type=int, help="epochs of fine-tuning (default: the model's recipe)")
    pretrained.add_argument("--fine-tune-learning-rate", type=float, help="peak learning rate of fine-tuning (default: the model's recipe)")


def cmd_data(args) -> int:
    data = _import("petal.data", "petal data")
    doctor = _import("petal.doctor", "petal data")
    if args.undo_move:
        return _undo_move(args.undo_move)
    if args.data_dir is None:
        raise PetalError("petal data needs DIR (or --undo-move MANIFEST)")
    if args.move_to and not args.label_issues:
        raise PetalError("--move-to moves what --label-issues flags: pass --label-issues too")
    split = data.load_split(args.data_dir, args.val_split, args.seed, args.split_method, layout=args.layout,
                            follow_links=args.follow_links)
    started = time.perf_counter()
    report = doctor.examine(split, max_pixels=args.max_pixels, progress=None if args.json else _progress_bar("examining"))
    seconds = time.perf_counter() - started
    extra = _label_issues(args, split, report) if args.label_issues else {}
    report = extra.pop("report", report)
    if args.json:
        print(json.dumps({**report.to_json(), "unindexed_files": doctor.unindexed_files(args.data_dir), **extra}, indent=2))
        return 0
    _print_data_report(report, split, seconds, doctor, args)
    if args.label_issues:
        _print_label_issues(extra)
    grid_path = args.grid or Path(f"{Path(args.data_dir).resolve().name}-samples.png")
    _save_sample_grid(split.train, set(report.unusable), grid_path)
    print(f"Sample grid: {grid_path}")
    return 0


def _print_data_report(report, split, seconds, doctor, args) -> None:
    print(f"Found {report.files} files belonging to {len(report.class_counts)} classes.")
    width = max(len(name) for name in report.class_counts)
    for name, count in report.class_counts.items():
        print(f"  {name:<{width}}  {count:>7,}")
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
        print(f"Not indexed (not an image extension): {len(unindexed)} files, e.g. {', '.join(unindexed[:3])}")
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
            print(f"  {kind}: {finding.path}" + (f"  ({finding.detail})" if finding.detail else ""))
        if len(found) > len(shown):
            print(f"  {kind}: ... and {len(found) - len(shown)} more (--all lists every file)")


def _save_sample_grid(folder, unusable: set[str], grid_path: Path) -> None:
    image = _import("petal.image", "petal data")
    plots = _import("petal.plots", "petal data")
    images, titles = [], []
    for path, label in zip(folder.paths, folder.labels):
        if path in unusable:
            continue
        images.append(image.decode_image(folder.absolute(path), (180, 180)))
        titles.append(folder.class_names[label])
        if len(images) == 9:
            break
    plots.save_image_grid(images, titles, grid_path)


def _label_issues(args, split, report) -> dict:
    """petal data --label-issues: find, merge into the doctor's report, draw the contact sheet, move if asked."""
    _require(("cleanlab", "sklearn"), "petal data --label-issues")
    label_issues = _import("petal.label_issues", "petal data --label-issues")
    kinds = tuple(k.strip() for k in args.move_kinds.split(",") if k.strip())
    quiet = args.json
    with native_log_silenced():  # TensorFlow's notices while it loads; the progress bars below stay visible
        _import("petal.training", "petal data --label-issues")
    found = label_issues.find_issues(split, cache_dir=args.cache_dir, max_pixels=args.max_pixels,
                                     progress=None if quiet else _progress_bar("decoding"),
                                     embedding_progress=None if quiet else _progress_bar("embedding", unit="batch"))
    sheet = args.contact_sheet or Path(f"{Path(args.data_dir).resolve().name}-label-issues.png")
    written = label_issues.save_contact_sheet(found, sheet)
    extra = {"report": label_issues.merge(report, found),
             "label_issues": {**found.summary(), "contact_sheet": str(written) if written else None}}
    if args.move_to:
        manifest, moved = label_issues.move_flagged(extra["report"].findings, split.train.root, args.move_to, kinds)
        extra["moved"] = {"files": moved, "to": str(args.move_to), "manifest": str(manifest), "undo": f"petal data --undo-move {manifest}"}
    return extra


def _print_label_issues(extra: dict) -> None:
    found = extra["label_issues"]
    counts = found["counts"]
    print(f"Label issues (Confident Learning, cleanlab): {counts.get('label-issue', 0)} label issues, {counts.get('outlier', 0)} outliers "
          f"among {found['images']} images; {found['folds']}-fold cross-validated accuracy of a linear head on "
          f"{found['image_size'][0]}x{found['image_size'][1]} embeddings: {found['cross_validated_accuracy']:.3f} "
          f"({sum(found['seconds'].values()):.1f} s)")
    if found["contact_sheet"]:
        print(f"Contact sheet of the suspects: {found['contact_sheet']}")
    if "moved" in extra:
        moved = extra["moved"]
        print(f"Moved {moved['files']} files to {moved['to']}; manifest {moved['manifest']}; undo: {moved['undo']}")


def _undo_move(manifest: Path) -> int:
    restored, problems = _import("petal.label_issues", "petal data --undo-move").undo_move(manifest)
    print(f"Moved {restored} files back")
    for problem in problems:
        print(f"petal: error: {problem}", file=sys.stderr)
    return EXIT_PARTIAL if problems else 0


def cmd_models(args) -> int:
    models = _import("petal.models", "petal models")
    entries = models.list_models(args.pattern)
    width = max((len(e.name) for e in entries), default=0)
    for entry in entries:
        default = " (default)" if entry.name == models.DEFAULT_MODEL else ""
        print(f"{entry.name:<{width}}  {entry.description}{default}")
    return 0


def cmd_train(args) -> int:
    started = time.perf_counter()
    result = _train(args, args.data_dir)
    history = result.history.get("val_accuracy") or [float("nan")]
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"Trained in {minutes} min {seconds} s: final validation accuracy {history[-1]:.4f} after {len(history)} epochs")
    print(f"Run folder: {result.run.path}  (report: {result.run / 'report.html'})")
    print(f"Next: petal export {result.run.path}")
    return 0


def cmd_export(args) -> int:
    export = _import("petal.export", "petal export")
    config = ExportConfig(
        variants=tuple(v.strip() for v in args.quantize.split(",") if v.strip()),
        int8_io=args.int8_io,
        calibration_images=args.calibration_images,
        min_float_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
        gate=args.gate,
    )
    report = export.export_litert(args.run_dir, config, progress=_progress_bar())
    print(report.markdown())
    for variant in report.variants:
        status = "wrote" if variant.passed else ("REJECTED" if config.gate else "wrote despite the gate (--no-gate)")
        print(f"{variant.variant:>8}: {status} {variant.path}" + ("" if variant.passed else f" ({variant.failure})"))
    print(f"Report: {Path(report.run) / 'export' / 'report.md'} (and report.json)")
    if report.failed and config.gate:
        names = ", ".join(v.variant for v in report.failed)
        print(f"petal: error: {names} failed the parity gate and {'was' if len(report.failed) == 1 else 'were'} not written as deployable", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_evaluate(args) -> int:
    evaluate = _import("petal.evaluation", "petal evaluate")  # TF-free; Keras is loaded only for a run folder
    with native_log_silenced():
        evaluation = evaluate.evaluate(args.model, args.data_dir, top_k=args.top_k, mistakes=args.mistakes)
    out = args.out or evaluate.default_output(args.model, args.data_dir)
    written = evaluate.write_evaluation(evaluation, out, evaluation.data)
    print(evaluation.table())
    for path, reason in sorted(evaluation.failed.items()):
        print(f"petal: error: {path}: {reason}", file=sys.stderr)
    if evaluation.mistakes:
        print(f"most confident mistakes ({len(evaluation.mistakes)}):")
        for m in evaluation.mistakes[:5]:
            print(f"  {m.path}: {m.true} predicted as {m.predicted} ({100 * m.confidence:.1f}%)")
    print("Wrote " + ", ".join(str(p) for p in written))
    return EXIT_PARTIAL if evaluation.failed else 0


def cmd_report(args) -> int:
    print(f"Wrote {_import('petal.report', 'petal report').build_report(args.run_dir)}")
    return 0


def cmd_serve(args) -> int:
    serve = _import("petal.serve", "petal serve")
    uvicorn = _import("uvicorn", "petal serve")
    if not 0 <= args.port <= 65535 or not args.max_upload_mb > 0:
        raise PetalError(f"--port must be in 0..65535 and --max-upload-mb positive. Received: --port {args.port}, --max-upload-mb {args.max_upload_mb}")
    with native_log_silenced():
        app = serve.create_app(args.model, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), decodes=args.decodes,
                               timeout_s=args.timeout, max_pixels=args.max_pixels)
    print(f"Serving {args.model} on http://{args.host}:{args.port}/ (POST /predict with a file field 'image'); Ctrl-C stops")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_predict(args) -> int:
    predict = _import("petal.predict", "petal predict")
    with native_log_silenced():
        predictor = predict.Predictor.load(args.model)
    failed = 0
    for result in predictor.predict(args.images, top_k=args.top_k):
        if isinstance(result, predict.PredictionError):
            print(f"petal: error: {result.source}: {result.reason}", file=sys.stderr)
            failed += 1
            continue
        print(result.sentence())
        print("  " + result.top_line())
    if failed == len(args.images):
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else 0


def cmd_predict_batch(args) -> int:
    batch = _import("petal.batch", "petal predict-batch")
    _require(("ray", "pyarrow", "psutil"), "petal predict-batch")
    result = batch.predict_batch(
        args.model, args.source, args.out, address=args.address, workers=args.workers, batch_size=args.batch_size,
        top_k=args.top_k, part_size=args.part_size, overwrite=args.overwrite, dashboard=args.dashboard,
        progress=_progress_bar("predicting"),
    )
    if result.parts_skipped:
        print(f"{result.parts_skipped} parts were already written by an earlier run; predicted the rest")
    print(result.summary() + f" -> {args.out}")
    if not result.predicted:
        print(f"petal: error: every file failed; the error column of {args.out}/part-*.parquet says why", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_demo(args) -> int:
    """data -> train -> export -> predict, each step printed as the tutorial does it."""
    from petal.sample_data import sample_folder

    data_dir = args.data_dir or str(sample_folder())
    print(f"== 1/4 data: {data_dir}")
    split_options = ["--val-split", str(args.val_split), "--seed", str(args.seed), "--split", args.split_method,
                     "--layout", args.layout] + (["--follow-links"] if args.follow_links else [])
    cmd_data(build_parser().parse_args(["data", data_dir, *split_options, "--max-pixels", str(args.max_pixels or DEFAULT_MAX_PIXELS)]))
    print("== 2/4 train")
    result = _train(args, data_dir)
    accuracy = result.history.get("val_accuracy") or [float("nan")]
    print(f"Validation accuracy: {accuracy[-1]:.4f} on {len(result.run.split('validation').paths)} photos the model never trained on")
    print("== 3/4 export")
    cmd_export(build_parser().parse_args(["export", str(result.run.path)]))
    print("== 4/4 predict (a validation image of each of three classes, through the .tflite)")
    validation = result.run.split("validation")
    first_of_class = {}
    for path, label in zip(validation.paths, validation.labels):
        first_of_class.setdefault(label, validation.absolute(path))
    images = list(first_of_class.values())[:3]
    cmd_predict(argparse.Namespace(model=result.run.export_dir / "model-float32.tflite", images=images, top_k=3))
    print(f"Run folder: {result.run.path}  (open report.html: curves, diagnosis, samples, export table)")
    return 0


def _train(args, data_dir):
    config_module = _import("petal.config", "petal train")
    train = _import("petal.training", "petal train")
    models = _import("petal.models", "petal train")
    model = args.model or models.DEFAULT_MODEL
    models.get_model_entry(model)
    settings = {name: getattr(args, name, None) for name in TRAIN_SETTINGS}
    if settings["exclude"]:
        settings["exclude"] = _import("petal.label_issues", "petal train --exclude").read_exclusion_list(settings["exclude"], data_dir)
    for name in ("image_size", "train_image_size"):
        settings[name] = tuple(getattr(args, name)) if getattr(args, name, None) else None
    on_ray = bool(getattr(args, "workers", None) or getattr(args, "address", None))
    if on_ray:
        settings["strategy"] = "multi-worker"
    config = config_module.TrainConfig.for_model(str(Path(data_dir).resolve()), model, **settings)
    out = args.out or Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if on_ray:
        _require(("ray", "psutil"), "petal train --workers")
        distributed = _import("petal.distributed", "petal train --workers")
        result = distributed.train_on_ray(config, out, address=args.address, resume=getattr(args, "resume", False))
    else:
        verbose = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in a log
        result = train.train(config, out, resume=getattr(args, "resume", False), verbose=verbose, progress=_progress_bar())
    print(f"Diagnosis: {result.diagnosis['verdict']}")
    return result


def _progress_bar(desc: str = "decoding", unit: str = "img"):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda iterable, total: tqdm(iterable, total=total, unit=unit, desc=desc, leave=False)


def _import(module: str, feature: str):
    """Import a module that needs an optional extra (EXTRAS), or say in one line how to get it."""
    try:
        with native_log_silenced() if "tensorflow" not in sys.modules else contextlib.nullcontext():
            return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        for extra, modules in EXTRAS.items():
            if missing in modules:
                raise MissingDependencyError(feature, extra, missing) from None
        raise


def _require(modules, feature: str) -> None:
    """Check that optional modules are installed without importing them (Ray reads its settings when imported)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            extra = next(extra for extra, provided in EXTRAS.items() if module in provided)
            raise MissingDependencyError(feature, extra, module)


def _version() -> str:
    from petal import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
