"""The `petal` command line: every command's arguments. `petal train`'s settings come from the TrainConfig
fields themselves (petal.config.setting): name, type, choices, help and what a missing flag means."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import shtab

from petal import __version__
from petal.cli import commands, data_command
from petal.config import EXPORT_VARIANTS, INT8_IO_TYPES, SPLIT, ExportConfig, TrainConfig
from petal.registry import DEFAULT_MODEL

SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.metadata}
SPLIT_SETTINGS = [name for name, f in SETTINGS.items() if f.metadata["group"] == SPLIT]
FIELD_TYPES = typing.get_type_hints(TrainConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petal", description="Image classification from a folder of photos, the tutorial way and better.")
    parser.add_argument("--version", action="version", version=f"petal {__version__}")
    subcommands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    data = subcommands.add_parser("data", help="summarise a folder of class sub-folders and save a sample grid")
    data.add_argument("data_dir", metavar="DIR", nargs="?")
    add_settings(data, [*SPLIT_SETTINGS, "max_pixels"])
    data.add_argument("--grid", type=Path, help="where to save the 3x3 sample grid (default: DIR-NAME-samples.jpg here)")
    data.add_argument("--json", action="store_true", help="print the full report as JSON (no grid)")
    data.add_argument("--all", action="store_true", help="list every file of every finding, not the first five")
    issues = data.add_argument_group("label issues, near copies and outliers (docs/DATA-DOCTOR.md; needs petal-vision[train])")
    issues.add_argument("--label-issues", action="store_true",
                        help="also find photos filed under the wrong class, near copies and outliers, from the default "
                             "pretrained backbone's embeddings (cleanlab, Confident Learning)")
    issues.add_argument("--contact-sheet", type=Path, metavar="PNG",
                        help="where to save the suspects' contact sheet (default: DIR-NAME-label-issues.png here)")
    add_settings(issues, ["cache_dir"])
    issues.add_argument("--move-to", type=Path, metavar="QUARANTINE",
                        help="move (never delete) the flagged files there, keeping their class folders, with a manifest to undo it")
    issues.add_argument("--move-kinds", default="label-issue,outlier", metavar="KINDS",
                        help="comma-separated finding kinds --move-to moves (default: label-issue,outlier)")
    issues.add_argument("--undo-move", type=Path, metavar="MANIFEST", help="move the files a --move-to manifest lists back (no DIR needed)")
    data.set_defaults(handler=data_command.cmd_data)

    models = subcommands.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'tutorial*'")
    models.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    models.set_defaults(handler=commands.cmd_models)

    train = subcommands.add_parser("train", help="train a model and write a run folder")
    train.add_argument("data_dir", metavar="DIR")
    add_train_options(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    train.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    train.set_defaults(handler=commands.cmd_train)

    export = subcommands.add_parser("export", help="convert a run's model to LiteRT and check it against Keras")
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
    export.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    export.set_defaults(handler=commands.cmd_export)

    evaluate = subcommands.add_parser("evaluate", help="per-class metrics, confusion matrix, calibration and worst mistakes")
    evaluate.add_argument("model", metavar="MODEL", help="a run folder or a .tflite (evaluated without TensorFlow)")
    evaluate.add_argument("--data", dest="data_dir", metavar="DIR",
                          help="a folder of class sub-folders named as the model's classes (default: the run's validation split)")
    evaluate.add_argument("--out", type=Path, help="where to write (default: RUN/evaluation/keras or RUN/evaluation/FILE-STEM)")
    evaluate.add_argument("--top-k", type=int, default=3, metavar="K", help="also report top-K accuracy (default 3)")
    evaluate.add_argument("--mistakes", type=int, default=16, help="how many of the most confident mistakes to show (default 16)")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    evaluate.set_defaults(handler=commands.cmd_evaluate)

    report = subcommands.add_parser("report", help="rebuild RUN_DIR/report.html, one self-contained page of the whole run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    report.set_defaults(handler=commands.cmd_report)

    serve = subcommands.add_parser("serve", help="a local page to try the model on photos, and POST /predict (JSON)")
    serve.add_argument("model", metavar="MODEL", help="a .tflite (served without TensorFlow) or a run folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20, help="larger uploads get 413 (default 20)")
    serve.add_argument("--decodes", type=int, default=2, help="images decoded at once; bounds the server's memory (default 2)")
    serve.add_argument("--timeout", type=float, default=10, metavar="SECONDS",
                       help="a request not decoded and classified this long after its upload gets 503 (default 10)")
    serve.add_argument("--max-pixels", type=int, help="larger images get 413 (default: the model's limit)")
    serve.set_defaults(handler=commands.cmd_serve)

    predict = subcommands.add_parser("predict", help="classify images with a run folder or a .tflite file")
    predict.add_argument("model", metavar="MODEL", help="a run folder or a .tflite written by petal export")
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--top-k", type=int, default=3, metavar="K", help="how many of the most likely classes to show (default 3)")
    predict.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    predict.set_defaults(handler=commands.cmd_predict)

    batch = subcommands.add_parser("predict-batch", help="classify a folder, glob or manifest of any size on Ray, into Parquet files")
    batch.add_argument("model", metavar="MODEL", help="a .tflite, or a run folder (its export/model-float32.tflite)")
    batch.add_argument("source", metavar="SOURCE",
                       help="a folder (searched recursively), a quoted glob, or a manifest: .txt, or .csv/.parquet with a 'path' column")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the Parquet parts go; a killed run resumes there")
    batch.add_argument("--address", help="a Ray cluster to join, e.g. 10.0.0.5:6379 (default: start a local one on 127.0.0.1)")
    batch.add_argument("--workers", type=int, default=2, help="LiteRT interpreters, one per Ray actor (default 2)")
    batch.add_argument("--batch-size", type=int, default=32, help="images per interpreter call (default 32)")
    batch.add_argument("--top-k", type=int, default=3, metavar="K", help="how many of the most likely classes each row keeps (default 3)")
    batch.add_argument("--part-size", type=int, default=512, help="files per Parquet part, the unit of work and of resuming (default 512)")
    batch.add_argument("--overwrite", action="store_true", help="replace DIR's predictions of another model or source")
    batch.add_argument("--dashboard", action="store_true", help="start the local cluster with Ray's dashboard")
    batch.add_argument("--json", action="store_true", help="print the result as one JSON object (docs/schemas/COMMAND.schema.json)")
    batch.set_defaults(handler=commands.cmd_predict_batch)

    completion = subcommands.add_parser("completion", help="print a shell completion script: eval \"$(petal completion bash)\"")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(handler=lambda args: print(shtab.complete(parser, shell=args.shell)))

    demo = subcommands.add_parser("demo", help="the whole workflow (data, train, export, predict) on the bundled sample")
    demo.add_argument("--data", dest="data_dir", help="a folder of class sub-folders (default: the bundled flower sample)")
    add_train_options(demo)
    demo.set_defaults(handler=commands.cmd_demo)
    return parser


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=f"a name from `petal models` (default: {DEFAULT_MODEL}, pretrained; "
                                                       "petal-resnet trains from scratch)")
    parser.add_argument("--out", type=Path, help="run folder to write (default: runs/MODEL-TIMESTAMP)")
    parser.add_argument("--address", help="the Ray cluster of --workers, e.g. 10.0.0.5:6379 (default: a local one on 127.0.0.1)")
    add_settings(parser, list(SETTINGS), recipe_defaults=True)


def add_settings(parser: argparse.ArgumentParser, names: list[str], recipe_defaults: bool = False) -> None:
    """A flag per TrainConfig setting in `names`. With `recipe_defaults` a flag not given is None, so the
    model's recipe (TrainConfig.for_model) fills it; otherwise it is the field's default."""
    groups: dict[str | None, argparse._ActionsContainer] = {None: parser, SPLIT: parser}
    for name in names:
        f = SETTINGS[name]
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        flag = meta["flag"] or "--" + name.replace("_", "-")
        kind = typing.get_args(FIELD_TYPES[name]) or (FIELD_TYPES[name],)
        options = {"dest": name, "help": f"{meta['help']} (default: {meta['default_shown']})".replace("%", "%%"),
                   "default": None if recipe_defaults and meta["group"] != SPLIT else f.default}
        if meta["choices"]:
            options["choices"] = meta["choices"]
        if meta["metavar"]:
            options["metavar"] = meta["metavar"]
        if kind[0] is bool:
            options["action"] = argparse.BooleanOptionalAction if recipe_defaults and meta["group"] != SPLIT else "store_true"
        elif FIELD_TYPES[name] in (tuple[int, int], tuple[int, int] | None):
            options.update(type=int, nargs=2)
        elif name == "exclude":
            options["default"] = None  # a file naming the paths: petal.data.quarantine.read_exclusion_list
        else:
            options["type"] = next(t for t in kind if t is not type(None))
        groups[meta["group"]].add_argument(flag, **options)
