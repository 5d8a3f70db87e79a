"""`petal predict-batch`: a LiteRT model over any number of photos, on Ray Data, into Parquet shards.

The source (a folder searched recursively, a glob, or a manifest: .txt, .csv or .parquet with a
`path` column) is first streamed into numbered manifest parts of `part_size` paths under
OUT/_manifest/. The parts are the unit of work and of record: Ray Data hands part numbers to a pool of
actors, each holding one LiteRT interpreter (petal.runtime.predict.Predictor, so the same decode-and-resize
as everywhere else), and each part's rows are written atomically as OUT/part-NNNNNN.parquet. The
driver only ever sees one small summary per part, so its memory does not grow with the number of
files. Started again after a kill, the same command skips every part whose file exists; a part cut
off midway has no file yet and is predicted again, whole, so no file's row is ever written twice.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from petal import atomic
from petal.data.decode import IMAGE_EXTENSIONS
from petal.errors import ConfigError, PetalError, RunFolderError
from petal.runtime.native_log import native_log_silenced

PART_SIZE = 512
MAX_BLOCKS = 10_000  # Ray Data blocks of part numbers: one part each, up to this many
# Names that start with "_" are skipped by Parquet readers (pyarrow's ignore_prefixes), so OUT itself
# is a Parquet dataset: pyarrow.parquet.read_table(OUT) and pandas.read_parquet(OUT) read every part.
RECORD = "_batch.json"
MANIFEST = "_manifest"
SCHEMA_VERSION = 3  # 2: the "sure" column (calibrated "not sure"); 3: manifest parts hold a JSON string a line


@dataclass
class BatchResult:
    predicted: int
    failed: int
    seconds: float  # prediction time, cluster start excluded
    parts_skipped: int  # parts a previous run had already written

    @property
    def images_per_second(self) -> float:
        return (self.predicted + self.failed) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        speed = f", {self.images_per_second:,.0f} img/s" if self.seconds else ""  # every part was there already: no speed
        return f"{self.predicted:,} predicted, {self.failed:,} failed{speed}"


def resolve_model(model: str | os.PathLike) -> Path:
    """A `.tflite`, or a run folder's exported float32 `.tflite` (the one closest to its Keras model)."""
    path = Path(model)
    if path.is_dir():
        exported = path / "export" / "model-float32.tflite"
        if not exported.is_file():
            raise RunFolderError(f"{path}: no export/model-float32.tflite; run `petal export {path}` first")
        return exported
    if path.suffix != ".tflite" or not path.is_file():
        raise RunFolderError(f"{path}: expected a run folder or a .tflite file")
    return path


def iter_source(source: str) -> Iterator[str]:
    """Absolute paths from a folder (recursive, sorted), a glob (sorted) or a manifest, in a fixed order."""
    path = Path(source)
    if path.is_dir():
        for directory, subdirs, files in os.walk(path):
            subdirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield os.path.abspath(os.path.join(directory, name))
    elif path.is_file() and path.suffix.lower() in (".txt", ".csv", ".parquet"):
        yield from _iter_manifest(path)
    elif glob.has_magic(source):
        for match in sorted(glob.iglob(source, recursive=True)):
            if os.path.isfile(match):
                yield os.path.abspath(match)
    else:
        raise ConfigError(f"{source}: not a folder, a glob or a manifest (.txt, .csv or .parquet with a 'path' column)")


def _iter_manifest(path: Path) -> Iterator[str]:
    base = path.parent

    def absolute(entry: str) -> str:
        return entry if os.path.isabs(entry) else os.path.abspath(base / entry)

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        manifest = pq.ParquetFile(path)
        if "path" not in manifest.schema_arrow.names:
            raise ConfigError(f"{path}: a Parquet manifest needs a 'path' column; it has {manifest.schema_arrow.names}")
        for batch in manifest.iter_batches(columns=["path"], batch_size=65536):
            yield from (absolute(p) for p in batch.column(0).to_pylist() if p)
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ConfigError(f"{path}: a CSV manifest needs a 'path' column; it has {reader.fieldnames}")
            yield from (absolute(row["path"]) for row in reader if row["path"])
    else:  # one path per line; blank lines and # comments skipped, as in petal train --exclude lists
        with open(path, encoding="utf-8") as f:
            yield from (absolute(line.strip()) for line in f if line.strip() and not line.lstrip().startswith("#"))


class BatchFolder:
    """OUT: _batch.json (what made it), _manifest/part-N.txt (the paths of part N), part-N.parquet (its rows).
    Opening it removes the scratch files of a killed run (petal.atomic)."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out)
        atomic.remove_partials(self.path)

    def manifest_part(self, part: int) -> Path:
        return self.path / MANIFEST / f"part-{part:06d}.txt"

    def part_paths(self, part: int) -> list[str]:
        """The paths of part `part`, as listed: one JSON string a line, so a name may hold a line break (and a name
        that is not UTF-8 keeps its bytes, as surrogate escapes)."""
        return [json.loads(line) for line in self.manifest_part(part).read_text(encoding="ascii").split("\n") if line]

    def _write_part(self, part: int, paths: list[str]) -> None:
        atomic.write_text(self.manifest_part(part), "".join(json.dumps(p) + "\n" for p in paths))

    def output_part(self, part: int) -> Path:
        return self.path / f"part-{part:06d}.parquet"

    def record(self) -> dict | None:
        try:
            return json.loads((self.path / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def prepare(self, identity: dict, source: str, part_size: int, overwrite: bool) -> dict:
        """Check or start the folder (made, and held, by the caller: atomic.held); list the source into manifest
        parts unless a complete listing is there."""
        record = self.record()
        if record is not None and record["identity"] != identity:
            if not overwrite and "parts" in record and not record.get("nothing_predicted"):  # else nothing to lose
                changed = sorted(k for k in identity if record["identity"].get(k) != identity[k])
                raise RunFolderError(
                    f"{self.path}: holds predictions of another {' and '.join(changed)}; pass --overwrite to replace them"
                )
            record = None
        if record is None and self.path.exists() and atomic.contents(self.path):
            if not (self.path / RECORD).exists():  # not ours: never emptied, --overwrite or not
                raise RunFolderError(f"{self.path}: exists and is not a predict-batch output (no {RECORD}); choose another --out")
            for item in atomic.contents(self.path):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        if record is None or "parts" not in record:
            atomic.write_json(self.path / RECORD, {"identity": identity})  # ours from here: a killed listing is redone
            try:
                files, parts = self._write_manifest(source, part_size)
            except ConfigError:  # nothing to predict: leave no listing that a corrected command would have to --overwrite
                shutil.rmtree(self.path / MANIFEST, ignore_errors=True)
                (self.path / RECORD).unlink()  # a folder this run made is then removed by atomic.held
                raise
            record = {"identity": identity, "files": files, "parts": parts, "part_size": part_size}
            atomic.write_json(self.path / RECORD, record)
        return record

    def _write_manifest(self, source: str, part_size: int) -> tuple[int, int]:
        files, part, chunk = 0, 0, []
        for path in iter_source(source):
            chunk.append(path)
            files += 1
            if len(chunk) == part_size:
                self._write_part(part, chunk)
                part, chunk = part + 1, []
        if chunk:
            self._write_part(part, chunk)
            part += 1
        if not files:
            raise ConfigError(f"{source}: no image files found")
        return files, part

    def parts_to_do(self, parts: int) -> list[int]:
        return [k for k in range(parts) if not self.output_part(k).exists()]


class PartPredictor:
    """A Ray Data actor: one LiteRT interpreter; predicts whole parts and writes each one's Parquet file."""

    def __init__(self, model: str, out: str, top_k: int, batch_size: int):
        from petal.runtime.predict import Predictor

        self.predictor = Predictor.load(model, num_threads=1)
        self.folder = BatchFolder(out)
        self.top_k = top_k
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        predicted, failed = [], []
        for part in batch["part"]:
            ok, bad = self.predict_part(int(part))
            predicted.append(ok)
            failed.append(bad)
        return {"part": batch["part"], "predicted": predicted, "failed": failed}

    def predict_part(self, part: int) -> tuple[int, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from petal.runtime.predict import PredictionError

        paths = self.folder.part_paths(part)
        rows = {"path": [], "label": [], "confidence": [], "sure": [], "top_labels": [], "top_probabilities": [], "error": []}
        for result in self.predictor.predict(paths, top_k=self.top_k, batch_size=self.batch_size):
            rows["path"].append(result.source)
            if isinstance(result, PredictionError):
                for column, empty in (("label", None), ("confidence", None), ("sure", None), ("top_labels", []), ("top_probabilities", []),
                                      ("error", result.reason)):
                    rows[column].append(empty)
            else:
                rows["label"].append(result.label)
                rows["confidence"].append(result.confidence)
                rows["sure"].append(result.sure)
                rows["top_labels"].append([name for name, _ in result.top])
                rows["top_probabilities"].append([p for _, p in result.top])
                rows["error"].append(None)
        table = pa.table(rows, schema=output_schema())
        with atomic.atomic_path(self.folder.output_part(part)) as tmp:
            pq.write_table(table, tmp)
        bad = sum(error is not None for error in rows["error"])
        return len(paths) - bad, bad


def output_schema():
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("label", pa.string()), ("confidence", pa.float32()), ("sure", pa.bool_()),
        ("top_labels", pa.list_(pa.string())), ("top_probabilities", pa.list_(pa.float32())), ("error", pa.string()),
    ])


def predict_batch(model: str | os.PathLike, source: str, out: str | os.PathLike, *, address: str | None = None,
                  workers: int = 2, batch_size: int = 32, top_k: int = 3, part_size: int = PART_SIZE,
                  overwrite: bool = False, dashboard: bool = False, progress=None) -> BatchResult:
    """Predict every file of `source` into Parquet parts under `out`; see the module docstring.
    `progress(None, total=N)` makes a bar with update(n) and close(), such as tqdm's."""
    from petal.runtime.predict import Predictor
    from petal.scale.cluster import check_workers, ray_cluster, ray_error_line

    if workers < 1 or batch_size < 1 or top_k < 1 or part_size < 1:
        raise ConfigError("--workers, --batch-size, --top-k and --part-size must be at least 1")
    model_path = resolve_model(model)
    with native_log_silenced():
        Predictor.load(model_path)  # an unusable model fails here, in one line, before any cluster starts
    identity = {"model": _sha256(model_path), "source": _source_identity(source), "top_k": top_k, "part_size": part_size,
                "schema": SCHEMA_VERSION}
    with atomic.held(out, "predict-batch"):  # a second run into OUT would write the same parts
        folder = BatchFolder(out)
        record = folder.prepare(identity, source, part_size, overwrite)
        todo = folder.parts_to_do(record["parts"])
        skipped = record["parts"] - len(todo)
        if not todo:
            return _totals(folder, record["parts"], skipped, 0.0)
        with ray_cluster(address, dashboard=dashboard) as ray:
            check_workers(ray, workers)
            cpus_per_worker = _cpus_per_worker(ray, workers)
            started = time.perf_counter()
            parts = ray.data.from_items([{"part": k} for k in todo], override_num_blocks=min(len(todo), MAX_BLOCKS))
            with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60 (pinned)
                warnings.simplefilter("ignore", DeprecationWarning)
                summaries = parts.map_batches(
                    PartPredictor,
                    fn_constructor_kwargs={"model": str(model_path.resolve()), "out": str(folder.path.resolve()),
                                           "top_k": top_k, "batch_size": batch_size},
                    batch_size=1,
                    num_cpus=cpus_per_worker,
                    compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),  # no idle actors for a few parts
                    max_restarts=0,  # a lost part is redone by the next run, not by a restarted actor
                )
            bar = progress(None, total=sum(_part_length(record, k) for k in todo)) if progress else None
            try:
                for row in summaries.iter_rows():
                    if bar is not None:
                        bar.update(int(row["predicted"]) + int(row["failed"]))
            except Exception as exc:  # a Ray task error: its first line names the cause
                raise PetalError(f"batch prediction failed: {ray_error_line(exc)}") from None
            finally:
                if bar is not None:
                    bar.close()
            seconds = time.perf_counter() - started
        return _totals(folder, record["parts"], skipped, seconds)


def _cpus_per_worker(ray, workers: int) -> float:
    """One CPU per actor where there is room, else a fraction: actors that claim every CPU starve Ray
    Data's other stages and the job hangs (docs/SCALE.md). Half a CPU always stays free."""
    from petal.scale.cluster import available_cpus

    return min(1.0, (available_cpus(ray) - 0.5) / workers)


def _part_length(record: dict, part: int) -> int:
    if part < record["parts"] - 1:
        return record["part_size"]
    return record["files"] - record["part_size"] * (record["parts"] - 1)


def _totals(folder: BatchFolder, parts: int, skipped: int, seconds: float) -> BatchResult:
    """Counts read back from the Parquet files (metadata and the error column only), so they hold for resumed runs too."""
    import pyarrow.parquet as pq

    predicted = failed = 0
    for k in range(parts):
        errors = pq.read_table(folder.output_part(k), columns=["error"]).column(0)
        failed += len(errors) - errors.null_count
        predicted += errors.null_count
    if not predicted:  # only error rows: a corrected command may take the folder without --overwrite
        atomic.write_json(folder.path / RECORD, {**folder.record(), "nothing_predicted": True})
    return BatchResult(predicted, failed, seconds, skipped)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(source: str) -> str:
    path = Path(source)
    return os.path.abspath(source) if path.exists() else source
