"""`petal predict-batch`: every file once, bad files as rows, resumable after SIGKILL, on a local Ray cluster."""

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PETAL, exported_tiny_run, make_image

from petal import atomic
from petal.cli import main
from petal.errors import ConfigError, RunFolderError
from petal.runtime.predict import Predictor
from petal.scale.cluster import SESSIONS_ROOT, session_processes
from petal.scale.predict_batch import BatchFolder, iter_source

BAD_FILES = {"text.jpg": "not an image", "truncated.jpg": "Truncated", "empty.jpg": "empty file"}


@pytest.fixture(scope="module")
def model_and_photos(tmp_path_factory):
    """The tiny exported run's float32 .tflite, and 60 photos plus three bad files in nested folders."""
    root = tmp_path_factory.mktemp("batch")
    run = exported_tiny_run(root)
    photos = root / "to-classify"
    for i in range(60):
        make_image(photos / f"batch-{i % 3}" / f"photo_{i:03d}.jpg", [(40, 60, 200), (40, 180, 60), (210, 40, 40)][i % 3], seed=i)
    (photos / "batch-0" / "text.jpg").write_text("this is not a photo")
    (photos / "batch-1" / "truncated.jpg").write_bytes((photos / "batch-1" / "photo_001.jpg").read_bytes()[:300])
    (photos / "batch-2" / "empty.jpg").write_bytes(b"")
    return run / "export" / "model-float32.tflite", photos


def read_output(out: Path) -> list[dict]:
    """The output folder read the way docs/SCALE.md says: pyarrow.parquet.read_table("DIR")."""
    return pq.read_table(str(out)).to_pylist()


@pytest.mark.slow
def test_killed_run_resumes_with_every_file_exactly_once_and_equal_to_petal_predict(model_and_photos, tmp_path):
    model, photos = model_and_photos
    out = tmp_path / "out"
    command = [PETAL, "predict-batch", str(model), str(photos), "--out", str(out), "--part-size", "2", "--workers", "2"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("part-*.parquet")):
        assert first.poll() is None and time.time() < deadline, "the first run ended before it could be killed"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(1)  # a part being written when the driver died is either complete now or never will be
    written_before = len(list(out.glob("part-*.parquet")))
    assert 0 < written_before < 32, "kill came too late to test resuming"
    [killed_session] = SESSIONS_ROOT.glob(f"{first.pid}-*")
    orphans = session_processes(killed_session)  # Ray's agents outlive a SIGKILLed driver

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert second.returncode == 0, second.stderr
    assert re.search(rf"\b{written_before} parts? (was|were) already written by an earlier run", second.stdout)
    assert "60 predicted, 3 failed" in second.stdout
    if orphans:  # some of them may notice their driver is gone and exit before the second run looks
        stopped = re.search(rf"stopped (\d+) Ray process(?:es)? left behind by an earlier petal run \(pid {first.pid}\)", second.stderr)
        assert stopped and 1 <= int(stopped.group(1)) <= len(orphans), second.stderr
    assert not killed_session.exists()
    assert not any(SESSIONS_ROOT.iterdir())  # the second run's own cluster is gone too
    assert not [p for p in orphans if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not list(out.rglob("*.partial")), "the killed run's scratch files are gone"
    rows = read_output(out)
    assert len(pd.read_parquet(str(out))) == len(rows) == 63  # docs/SCALE.md's other way to read it
    paths = [row["path"] for row in rows]
    expected = [str(p) for p in sorted(photos.rglob("*.jpg"), key=lambda p: (p.parent.name, p.name))]
    assert sorted(paths) == sorted(expected) and len(paths) == len(set(paths)) == 63
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert set(errors) == set(BAD_FILES) and all(BAD_FILES[name] in errors[name] for name in errors)
    good = {row["path"]: row for row in rows if not row["error"]}
    for result in Predictor.load(model).predict(sorted(good), top_k=3):
        row = good[result.source]
        assert row["label"] == result.label
        np.testing.assert_allclose(row["top_probabilities"], [p for _, p in result.top], atol=1e-5)
        assert row["top_labels"] == [name for name, _ in result.top]


def test_an_output_folder_of_another_model_or_source_is_refused_unless_overwrite(tmp_path, model_and_photos):
    _, photos = model_and_photos
    folder = BatchFolder(tmp_path / "out")
    folder.prepare({"model": "a", "source": str(photos)}, str(photos), part_size=16, overwrite=False)
    with pytest.raises(RunFolderError, match="holds predictions of another model; pass --overwrite"):
        folder.prepare({"model": "b", "source": str(photos)}, str(photos), part_size=16, overwrite=False)
    record = folder.prepare({"model": "b", "source": str(photos)}, str(photos), part_size=16, overwrite=True)
    assert record["identity"]["model"] == "b" and record["files"] == 63


def test_a_source_with_nothing_to_predict_leaves_no_output_and_the_corrected_command_needs_no_overwrite(tmp_path, model_and_photos):
    _, photos = model_and_photos
    (tmp_path / "empty-source").mkdir()
    out = tmp_path / "out"
    for wrong in (tmp_path / "no-such-source", tmp_path / "empty-source"):
        with pytest.raises(ConfigError, match=str(wrong)), atomic.held(out, "predict-batch"):  # as predict_batch holds it
            BatchFolder(out).prepare({"model": "a", "source": str(wrong)}, str(wrong), part_size=16, overwrite=False)
        assert not out.exists()

    record = BatchFolder(out).prepare({"model": "a", "source": str(photos)}, str(photos), part_size=16, overwrite=False)

    assert record["files"] == 63


def test_names_with_line_breaks_or_bytes_that_are_not_utf8_are_listed_whole(tmp_path):
    odd = tmp_path / "odd"
    names = ["a\nb.jpg", "c\rd\u2028e.jpg", os.fsdecode(b"\xff.jpg"), "plain.jpg"]
    for name in names:
        make_image(odd / name, (200, 30, 30), seed=1)
    record = BatchFolder(tmp_path / "out").prepare({"model": "a", "source": str(odd)}, str(odd), part_size=16, overwrite=False)
    assert record["files"] == 4
    assert BatchFolder(tmp_path / "out").part_paths(0) == [str(odd / name) for name in sorted(names)]


def test_a_listing_killed_before_it_completed_is_taken_over_by_another_source(tmp_path, model_and_photos):
    _, photos = model_and_photos
    out = tmp_path / "out"
    out.mkdir()
    (out / "_batch.json").write_text(json.dumps({"identity": {"model": "a", "source": "elsewhere"}}))  # no "parts" yet

    record = BatchFolder(out).prepare({"model": "a", "source": str(photos)}, str(photos), part_size=16, overwrite=False)

    assert record["files"] == 63 and record["identity"]["source"] == str(photos)


def test_a_folder_that_is_not_a_predict_batch_output_is_never_emptied(tmp_path, model_and_photos):
    _, photos = model_and_photos
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="is not a predict-batch output"):
            BatchFolder(tmp_path / "mine").prepare({"model": "a"}, str(photos), part_size=16, overwrite=overwrite)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_sources_folder_glob_and_manifests_list_the_same_files(tmp_path, model_and_photos):
    _, photos = model_and_photos
    from_folder = list(iter_source(str(photos)))
    relative = [os.path.relpath(p, tmp_path) for p in from_folder]
    (tmp_path / "list.txt").write_text("\n".join(relative) + "\n")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "note"], *[[p, "x"] for p in relative]])
    pq.write_table(pa.table({"path": from_folder}), tmp_path / "list.parquet")

    assert len(from_folder) == 63
    assert sorted(iter_source(str(photos / "**" / "*.jpg"))) == sorted(from_folder)
    for manifest in ("list.txt", "list.csv", "list.parquet"):
        assert list(iter_source(str(tmp_path / manifest))) == from_folder


def test_without_the_scale_extra_it_says_how_to_get_it(monkeypatch, capsys, model_and_photos, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    model, photos = model_and_photos
    assert main(["predict-batch", str(model), str(photos), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "petal: error: petal predict-batch needs ray, which is not installed: pip install 'petal-vision[scale]'"


def test_an_unreachable_address_fails_fast_in_one_line(model_and_photos, tmp_path):
    model, photos = model_and_photos
    started = time.time()
    done = subprocess.run([PETAL, "predict-batch", str(model), str(photos), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.time() - started < 60
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("petal: error: cannot reach the Ray cluster at 127.0.0.1:9")
    ]


def test_more_workers_than_cpus_is_refused_and_all_bad_files_exit_non_zero(model_and_photos, tmp_path):
    model, photos = model_and_photos
    too_many = subprocess.run([PETAL, "predict-batch", str(model), str(photos), "--out", str(tmp_path / "a"), "--workers", "64"],
                              capture_output=True, text=True, timeout=300)
    assert too_many.returncode == 2
    assert f"--workers 64 is more than the {os.cpu_count()} CPUs of the Ray cluster" in too_many.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD_FILES:
        (bad / name).write_bytes(b"")
    all_bad = subprocess.run([PETAL, "predict-batch", str(model), str(bad), "--out", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=300)
    assert all_bad.returncode == 2 and "0 predicted, 3 failed" in all_bad.stdout
    assert json.loads((tmp_path / "b" / "_batch.json").read_text())["files"] == 3
    listed = tmp_path / "list.txt"  # a corrected source, with a comment line, into the same --out: no --overwrite needed
    listed.write_text("# the photos\n" + "\n".join(str(p) for p in sorted(photos.rglob("photo_00*.jpg"))) + "\n")
    corrected = subprocess.run([PETAL, "predict-batch", str(model), str(listed), "--out", str(tmp_path / "b")],
                               capture_output=True, text=True, timeout=300)
    assert corrected.returncode == 0 and "10 predicted, 0 failed" in corrected.stdout, corrected.stderr[-800:]
    again = subprocess.run([PETAL, "predict-batch", str(model), str(listed), "--out", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "img/s" not in again.stdout  # nothing predicted this time: no speed to give
