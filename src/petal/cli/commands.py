"""The `petal` commands other than `data`: each turns its parsed arguments into one API call and prints the result."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from petal.cli.common import EXIT_ERROR, EXIT_PARTIAL, needs_extra, print_json, progress_bar, require
from petal.cli.data_command import cmd_data
from petal.config import ExportConfig, TrainConfig
from petal.data.decode import DEFAULT_MAX_PIXELS
from petal.data.index import resolved
from petal.data.quarantine import EXCLUDE_KINDS, read_exclusion_list
from petal.errors import PetalError, counted, printable
from petal.registry import DEFAULT_MODEL, get_model_entry, list_models
from petal.run_folder import RunFolder, duration
from petal.runtime.native_log import native_log_silenced

SETTINGS = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata]  # petal train's flags, one per setting


def cmd_models(args) -> int:
    entries = list_models(args.pattern)
    if args.json:
        print_json("models", {"default": DEFAULT_MODEL, "models": [
            {"name": e.name, "description": e.description, "pretrained": e.pretrained, "recipe": e.recipe} for e in entries]})
        return 0
    width = max((len(e.name) for e in entries), default=0)
    for entry in entries:
        default = " (default)" if entry.name == DEFAULT_MODEL else ""
        print(f"{entry.name:<{width}}  {entry.description}{default}")
    return 0


def cmd_train(args) -> int:
    result = _train(args, args.data_dir)
    history = result.history.get("val_accuracy") or [float("nan")]
    if args.json:
        validation = result.run.record("validation")
        print_json("train", {"run": str(result.run.path), "report": str(result.run / "report.html"), "epochs": len(history),
                             "final_val_accuracy": history[-1], "validation": validation, "calibration": result.run.record("calibration"),
                             "diagnosis": result.diagnosis, "seconds": result.run.record("environment")["seconds"],
                             "next": _next_after_training(result.run)})
        return 0
    print(trained_summary(result))
    print(f"Run folder: {result.run.path}  (report: {result.run / 'report.html'})")
    print(f"Next: {_next_after_training(result.run)}")
    return 0


def _next_after_training(run: RunFolder) -> str:
    """petal export RUN; for a run exported already (a --resume of a finished run), what export says next."""
    exported = run.recommended_model()
    return f"petal serve {exported}" if exported else f"petal export {run.path}"


def trained_summary(result) -> str:
    """How `petal train` and the demo end training: the run's wall time (as report.html gives it) and the saved
    float32 model's validation accuracy, as export and evaluate will see it."""
    epochs = len(result.history.get("val_accuracy") or [None])
    saved = result.run.record("validation")
    return (f"Trained in {duration(result.run.record('environment')['seconds'])} ({counted(epochs, 'epoch')}): validation accuracy "
            f"{saved['accuracy']:.4f} on {saved['images']} photos it never trained on")


def cmd_export(args) -> int:
    config = ExportConfig(
        variants=tuple(v.strip() for v in args.quantize.split(",") if v.strip()),
        int8_io=args.int8_io,
        calibration_images=args.calibration_images,
        min_float_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
        gate=args.gate,
    )
    return export_and_report(args.run_dir, config, as_json=args.json)


def export_and_report(run_dir, config: ExportConfig, as_json: bool = False, gate_failure_is_error: bool = True) -> int:
    """Export every variant behind the parity gate and print the table and what was written. A variant that
    fails the gate is an error (exit 1) unless `gate_failure_is_error` is False (the demo, which goes on
    with a variant that passed): then a note."""
    with needs_extra("petal export"):
        from petal.training import export
    report = export.export_litert(run_dir, config, progress=progress_bar())
    failed_gate = bool(report.failed and config.gate)
    if failed_gate:
        failed = f"{', '.join(v.variant for v in report.failed)} failed the parity gate and {'was' if len(report.failed) == 1 else 'were'} not written as deployable"
    if as_json:
        print_json("export", {**dataclasses.asdict(report), "report": str(Path(report.run) / "export" / "report.json")})
        if failed_gate:
            print(f"petal: error: {failed}", file=sys.stderr)
        return EXIT_PARTIAL if failed_gate else 0
    print(report.markdown())
    for variant in report.variants:
        status = "wrote" if variant.passed else ("REJECTED" if config.gate else "wrote despite the gate (--no-gate)")
        print(f"{variant.variant:>8}: {status} {variant.path}" + ("" if variant.passed else f" ({variant.failure})"))
    print(f"Report: {Path(report.run) / 'export' / 'report.md'} (and report.json)")
    recommended = RunFolder(report.run).recommended_model()
    if recommended:
        print(f"Next: petal serve {recommended}  (of the variants that passed the gate, the fastest at one thread), or petal predict {recommended} PHOTO")
    if failed_gate:
        if not gate_failure_is_error:
            print(f"Note: {failed}")
            return 0
        print(f"petal: error: {failed}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def cmd_evaluate(args) -> int:
    with needs_extra("petal evaluate"):  # TF-free; Keras is loaded only for a run folder
        from petal.training import evaluation as evaluate
    with native_log_silenced():
        evaluation = evaluate.evaluate(args.model, args.data_dir, top_k=args.top_k, mistakes=args.mistakes, progress=progress_bar())
    out = args.out or evaluate.default_output(args.model, args.data_dir)
    written = evaluate.write_evaluation(evaluation, out, evaluation.data)
    if args.json:
        print_json("evaluate", {**dataclasses.asdict(evaluation), "written": [str(p) for p in written]})
        return EXIT_PARTIAL if evaluation.failed else 0
    print(evaluation.table())
    for path, reason in sorted(evaluation.failed.items()):
        print(printable(f"petal: error: {path}: {reason}"), file=sys.stderr)
    if evaluation.mistakes:
        wrong = evaluation.images - sum(evaluation.confusion[c][c] for c in range(len(evaluation.confusion)))
        print(f"the most confident of {wrong} mistakes (mistakes.csv lists {len(evaluation.mistakes)}):")
        for m in evaluation.mistakes[:5]:
            print(printable(f"  {m.path}: {m.true} predicted as {m.predicted} ({100 * m.confidence:.1f}%)"))
    print("Wrote " + ", ".join(str(p) for p in written))
    return EXIT_PARTIAL if evaluation.failed else 0


def cmd_report(args) -> int:
    with needs_extra("petal report"):
        from petal.training.report import build_report
    path = build_report(args.run_dir)
    if args.json:
        print_json("report", {"report": str(path), "bytes": path.stat().st_size})
        return 0
    print(f"Wrote {path}")
    return 0


def cmd_serve(args) -> int:
    with needs_extra("petal serve"):
        import uvicorn

        from petal.runtime import serve
    max_upload_bytes = args.max_upload_mb * 1024 * 1024
    if not 0 <= args.port <= 65535 or not 0 < max_upload_bytes < float("inf"):  # 1e308 MB is inf bytes
        raise PetalError(f"--port must be in 0..65535 and --max-upload-mb a positive number. Received: --port {args.port}, "
                         f"--max-upload-mb {args.max_upload_mb}")
    with native_log_silenced():
        app = serve.create_app(args.model, max_upload_bytes=int(max_upload_bytes), decodes=args.decodes,
                               timeout_s=args.timeout, max_pixels=args.max_pixels)
    listener = serve.listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"Serving {args.model} on http://{host}:{listener.getsockname()[1]}/ (POST /predict with a file field 'image'); "
          f"Ctrl-C stops")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    return 0


def cmd_predict(args) -> int:
    from petal.runtime import predict

    with native_log_silenced():
        predictor = predict.Predictor.load(args.model)
    failed, predictions, errors = 0, [], []
    for result in predictor.predict(args.images, top_k=args.top_k):
        if isinstance(result, predict.PredictionError):
            print(printable(f"petal: error: {result.source}: {result.reason}"), file=sys.stderr)
            errors.append({"source": result.source, "reason": result.reason})
            failed += 1
        elif args.json:
            predictions.append({"source": result.source, "label": result.label, "confidence": result.confidence, "sure": result.sure,
                                "top": [{"label": name, "probability": p} for name, p in result.top], "tied": list(result.tied)})
        else:
            print(printable(result.sentence()))
            print(printable("  " + result.top_line()))
    if args.json:
        print_json("predict", {"model": str(args.model), "calibrated": predictor.calibration.calibrated,
                                "threshold": predictor.calibration.threshold, "predictions": predictions, "errors": errors})
    if failed == len(args.images):
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else 0


def cmd_predict_batch(args) -> int:
    require(("ray", "pyarrow", "psutil"), "petal predict-batch")
    with needs_extra("petal predict-batch"):
        from petal.scale import predict_batch as batch
    result = batch.predict_batch(
        args.model, args.source, args.out, address=args.address, workers=args.workers, batch_size=args.batch_size,
        top_k=args.top_k, part_size=args.part_size, overwrite=args.overwrite, dashboard=args.dashboard,
        progress=progress_bar("predicting"),
    )
    if args.json:
        print_json("predict-batch", {**dataclasses.asdict(result), "out": str(args.out)})
        return 0 if result.predicted else EXIT_ERROR
    if result.parts_skipped:
        print(f"{counted(result.parts_skipped, 'part')} {'was' if result.parts_skipped == 1 else 'were'} already written by an earlier run; "
              "predicted the rest")
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
    data_only = {"grid": None, "json": False, "all": False, "label_issues": False, "move_to": None, "move_kinds": ",".join(EXCLUDE_KINDS),
                 "contact_sheet": None, "undo_move": None}
    cmd_data(argparse.Namespace(**{**vars(args), "data_dir": data_dir, "max_pixels": args.max_pixels or DEFAULT_MAX_PIXELS, **data_only}))
    print("== 2/4 train")
    result = _train(args, data_dir)
    print(trained_summary(result))
    print("== 3/4 export")
    export_and_report(result.run.path, ExportConfig(), gate_failure_is_error=False)  # the demo goes on with a variant that passed
    model = result.run.recommended_model()  # the fastest .tflite that passed the gate
    print(f"== 4/4 predict (a validation image of each of three classes, through {Path(model).name if model else 'the Keras model: no .tflite passed the gate'})")
    validation = result.run.split("validation")
    first_of_class = {}
    for path, label in zip(validation.paths, validation.labels):
        first_of_class.setdefault(label, validation.absolute(path))
    images = list(first_of_class.values())[:3]
    cmd_predict(argparse.Namespace(model=model or result.run.path, images=images, top_k=3, json=False))
    print(f"Run folder: {result.run.path}  (open report.html: curves, diagnosis, samples, export table)")
    return 0


def _train(args, data_dir):
    with needs_extra("petal train"):
        from petal.training import loop
    model = args.model or DEFAULT_MODEL
    get_model_entry(model)
    resume = getattr(args, "resume", False)
    settings = {name: getattr(args, name, None) for name in SETTINGS}
    if settings["exclude"]:
        settings["exclude"] = read_exclusion_list(settings["exclude"], resolved(data_dir))
    for name in ("image_size", "train_image_size"):
        settings[name] = tuple(getattr(args, name)) if getattr(args, name, None) else None
    on_ray = bool(getattr(args, "workers", None) or getattr(args, "address", None))
    if on_ray:
        settings["strategy"] = "multi-worker"
    out = args.out or Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunFolder(out)
    if resume and run.config_path.is_file():  # options left out keep the run's own
        config = run.config().resumed_with(data_dir=str(resolved(data_dir)), model=args.model, **settings)
    else:
        config = TrainConfig.for_model(str(resolved(data_dir)), model, **settings)
    try:
        if on_ray:
            require(("ray", "psutil"), "petal train --workers")
            with needs_extra("petal train --workers"):
                from petal.scale.multi_worker import train_on_ray
            result = train_on_ray(config, out, address=args.address, resume=resume)
        else:
            # a progress bar on a terminal, one line per epoch in a log; stdout holds only the JSON with --json
            verbose = 0 if getattr(args, "json", False) else 1 if sys.stdout.isatty() else 2
            result = loop.train(config, out, resume=resume, verbose=verbose, progress=progress_bar())
    except KeyboardInterrupt:
        if run.config_path.is_file():
            raise KeyboardInterrupt(f"continue with: {run.resume_command()}") from None
        raise
    if not getattr(args, "json", False):
        print(f"Diagnosis: {result.diagnosis['verdict']}")
    return result
