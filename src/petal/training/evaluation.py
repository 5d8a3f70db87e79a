"""Evaluate a model (run folder or `.tflite`) on labelled images: per-class metrics, confusion,
calibration and the most confident mistakes.

Images stream through `Predictor` (the one decode path); only O(classes^2 + mistakes) numbers are
kept, so a folder of any size fits. A `.tflite` is evaluated without importing TensorFlow.
"""

from __future__ import annotations

import csv
import heapq
import io
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from petal import atomic
from petal.data.cache import content_key
from petal.data.index import ImageFolder, index_folder, is_inside, resolved
from petal.errors import ConfigError, DataError, RunFolderError, printable
from petal.run_folder import SCHEMA_VERSION, RunFolder
from petal.runtime.predict import PredictionError, Predictor
from petal.training.report import build_report

log = logging.getLogger(__name__)

CALIBRATION_BINS = 15


@dataclass
class Mistake:
    path: str
    true: str
    predicted: str
    confidence: float


@dataclass
class Evaluation:
    model: str
    data: str
    images: int
    failed: dict[str, str]
    class_names: list[str]
    accuracy: float
    top_k: int
    top_k_accuracy: float
    per_class: dict[str, dict[str, float]]  # precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    expected_calibration_error: float
    reliability: list[dict[str, float]]  # per confidence bin: lower, upper, count, confidence, accuracy
    mistakes: list[Mistake] = field(default_factory=list)  # most confident first
    training_photos: int = 0  # files of `data` with the contents of a training photo of the model's run
    sure_threshold: float = 0.0  # the model's calibrated "not sure" threshold (petal.runtime.calibration)
    coverage: float = 1.0  # share of the images predicted at or above it
    accuracy_when_sure: float | None = None  # accuracy on those images

    def table(self) -> str:
        width = max(len(printable(name)) for name in self.class_names + ["class"])
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for name in self.class_names:
            m = self.per_class[name]
            lines.append(f"{printable(name):<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {int(m['support']):7d}")
        top_k = f"top-{self.top_k} accuracy {self.top_k_accuracy:.4f}, " if self.top_k < len(self.class_names) else ""
        lines.append(f"accuracy {self.accuracy:.4f}, {top_k}"
                     f"expected calibration error {self.expected_calibration_error:.4f}, on {self.images} images"
                     + (f" ({len(self.failed)} could not be read)" if self.failed else ""))
        if self.sure_threshold > 0:
            sure = "none" if self.accuracy_when_sure is None else f"{self.accuracy_when_sure:.4f}"
            lines.append(f"sure (calibrated confidence >= {self.sure_threshold:.3f}) on {self.coverage:.1%} of the images, "
                         f"accuracy there {sure}; the rest are reported as not sure")
        return "\n".join(lines)


def evaluation_data(model_path: str | os.PathLike, folder: ImageFolder | None, class_names) -> ImageFolder:
    """The images to evaluate on: `folder` (classes matched by name), or the run's validation split."""
    if folder is not None:
        differences = [f"{what}: {', '.join(names)}" for what, names in (
            ("unknown", sorted(set(folder.class_names) - set(class_names))),
            ("missing", sorted(set(class_names) - set(folder.class_names)))) if names]
        if differences:
            raise DataError(f"{folder.root}: its classes must be the model's ({', '.join(class_names)}); " + "; ".join(differences))
        remap = np.array([class_names.index(name) for name in folder.class_names], dtype=np.int32)
        return ImageFolder(folder.root, tuple(class_names), folder.paths, remap[folder.labels])
    run = run_of(Path(model_path))
    if run is None:
        raise RunFolderError(f"{model_path}: not in a run folder, so there is no validation split to evaluate on; pass --data DIR")
    return run.split("validation")


def evaluate(model_path: str | os.PathLike, data_dir=None, top_k: int = 3, mistakes: int = 16, batch_size: int = 32,
             progress=None) -> Evaluation:
    """Every image of `data_dir` (default: the run's validation split) through the model (a run folder or a
    `.tflite`), as `petal predict` sees it. `progress`: a bar factory (petal.cli.common.progress_bar) over the images."""
    if top_k < 1 or mistakes < 0:
        raise ConfigError(f"top_k must be at least 1 and mistakes at least 0. Received: top_k={top_k}, mistakes={mistakes}")
    # indexed before the model (and TensorFlow, for a run folder) loads: a folder that cannot be used is said first,
    # named as petal train and petal data name it
    data = index_folder(resolved(data_dir)) if data_dir is not None else None
    predictor = Predictor.load(model_path)
    names = list(predictor.class_names)
    folder = evaluation_data(model_path, data, names)
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    in_top_k = 0
    bins = np.zeros((CALIBRATION_BINS, 3))  # count, sum of confidence, sum of correct
    worst: list[tuple[float, int, Mistake]] = []  # a min-heap of the most confident mistakes
    failed: dict[str, str] = {}
    sure = sure_and_right = 0
    sources = (folder.absolute(p) for p in folder.paths)
    if progress is not None:
        sources = progress(sources, total=len(folder.paths), desc="evaluating", unit="img")
    for index, result in enumerate(predictor.predict(sources, top_k=min(top_k, k), batch_size=batch_size)):
        if isinstance(result, PredictionError):
            failed[folder.paths[index]] = result.reason
            continue
        true, predicted = int(folder.labels[index]), names.index(result.label)
        confusion[true, predicted] += 1
        sure += result.sure
        sure_and_right += result.sure and true == predicted
        in_top_k += names[true] in [name for name, _ in result.top]
        b = min(int(result.confidence * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        bins[b] += (1, result.confidence, true == predicted)
        if true != predicted:
            item = (result.confidence, index, Mistake(folder.paths[index], names[true], result.label, result.confidence))
            (heapq.heappush if len(worst) < mistakes else heapq.heappushpop)(worst, item)
    evaluation = _summarise(str(model_path), str(folder.root), names, confusion, in_top_k, top_k, bins, worst, failed)
    evaluation.sure_threshold = predictor.calibration.threshold
    evaluation.coverage = sure / evaluation.images
    evaluation.accuracy_when_sure = sure_and_right / sure if sure else None
    if data_dir is not None:
        evaluation.training_photos = training_overlap(model_path, folder)
        if evaluation.training_photos:
            log.warning("%d of the %d photos in %s are training photos of this model (same contents): its accuracy on "
                        "them is inflated; evaluate on photos it never saw", evaluation.training_photos, len(folder), data_dir)
    return evaluation


def _summarise(model, data, names, confusion, in_top_k, top_k, bins, worst, failed) -> Evaluation:
    n = int(confusion.sum())
    if n == 0:
        raise DataError(f"{data}: none of the images could be read, nothing to evaluate")
    per_class = {}
    for c, name in enumerate(names):
        tp, predicted, support = confusion[c, c], confusion[:, c].sum(), confusion[c].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    reliability = [
        {"lower": b / CALIBRATION_BINS, "upper": (b + 1) / CALIBRATION_BINS, "count": int(count),
         "confidence": float(conf / count) if count else 0.0, "accuracy": float(right / count) if count else 0.0}
        for b, (count, conf, right) in enumerate(bins)
    ]
    ece = sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in reliability)
    return Evaluation(
        model=model, data=data, images=n, failed=failed, class_names=names,
        accuracy=float(np.trace(confusion) / n), top_k=top_k, top_k_accuracy=in_top_k / n,
        per_class=per_class, confusion=confusion.tolist(), expected_calibration_error=float(ece),
        reliability=reliability, mistakes=[m for _, _, m in sorted(worst, key=lambda item: (-item[0], item[1]))],
    )


def write_evaluation(evaluation: Evaluation, out_dir: str | os.PathLike, data_root: str | os.PathLike) -> list[Path]:
    """metrics.json and mistakes.csv always; confusion.png, reliability.png and mistakes.jpg when
    matplotlib is installed (the [train] extra); the run's report.html when `out_dir` is
    RUN/evaluation/NAME. Returns the files written.

    Raises:
        ConfigError: `out_dir` is inside `data_root` (its charts would be read as photos).
    """
    out = Path(out_dir)
    if is_inside(out, data_root):
        raise ConfigError(f"{out}: the evaluation must be written outside the data folder {data_root} (its charts would be read as photos)")
    written = _write_files(evaluation, out, data_root)
    run = run_of(out.parent.parent) if out.parent.name == "evaluation" else None
    return written + ([build_report(run.path)] if run else [])


def _write_files(evaluation: Evaluation, out: Path, data_root) -> list[Path]:
    atomic.write_json(out / "metrics.json", {"schema_version": SCHEMA_VERSION, **asdict(evaluation)})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180: csv then quotes names holding \r or \n
    writer.writerow(["path", "true", "predicted", "confidence"])
    writer.writerows([m.path, m.true, m.predicted, f"{m.confidence:.4f}"] for m in evaluation.mistakes)
    atomic.write_text(out / "mistakes.csv", buffer.getvalue())
    written = [out / "metrics.json", out / "mistakes.csv"]
    try:
        from petal.training import plots
    except ImportError:
        log.info("matplotlib is not installed (pip install 'petal-vision[train]'): no PNGs, only metrics.json and mistakes.csv")
        return written
    plots.save_confusion(np.array(evaluation.confusion), evaluation.class_names, out / "confusion.png")
    plots.save_reliability(evaluation.reliability, evaluation.expected_calibration_error, out / "reliability.png")
    if evaluation.mistakes:
        from petal.data.decode import decode_image

        images = [decode_image(os.path.join(data_root, m.path), (160, 160)) for m in evaluation.mistakes]
        titles = [f"{printable(m.true)} → {printable(m.predicted)} {100 * m.confidence:.0f}%\n{printable(Path(m.path).name)[:28]}"
                  for m in evaluation.mistakes]
        plots.save_image_grid(images, titles, out / "mistakes.jpg", columns=4)
    return written + [out / "confusion.png", out / "reliability.png"] + ([out / "mistakes.jpg"] if evaluation.mistakes else [])


def default_output(model_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """RUN/evaluation/keras for a run folder, RUN/evaluation/<file stem> for its .tflite, else beside the
    file; with `data_dir`, the name ends in `-on-<data folder name>`, so an evaluation on other data never
    replaces the one on the validation split (or another folder's)."""
    path = Path(model_path)
    run = run_of(path)
    name = "keras" if path.is_dir() else path.stem
    if data_dir is not None:
        name += f"-on-{resolved(data_dir).name}"
    return (path if path.is_dir() else run.path if run else path.parent) / "evaluation" / name


def training_overlap(model_path: str | os.PathLike, folder: ImageFolder) -> int:
    """How many of `folder`'s files have the contents of a training photo of the model's run (0 outside a
    run folder): their accuracy says little about new photos."""
    run = run_of(Path(model_path))
    if run is None:
        return 0
    train = run.split("train", decoded=True)  # a file training could not decode was not trained on
    trained_on = {content_key(train.absolute(p)) for p in train.paths} - {None}
    return sum(content_key(folder.absolute(p)) in trained_on for p in folder.paths)


def run_of(path: Path) -> RunFolder | None:
    """The run folder a model belongs to: itself, or the folder above a .tflite in RUN/export/."""
    candidate = path.parent.parent if path.suffix == ".tflite" else path
    if (candidate / "split" / "validation.csv").exists() and (candidate / "config.json").exists():
        return RunFolder(candidate)
    return None
