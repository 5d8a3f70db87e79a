"""Data-parallel training: two Ray Train workers, and MirroredStrategy on two logical CPU devices, each
writing an ordinary run folder that exports and predicts like a single-process one."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PETAL, make_folder

from petal.scale.cluster import SESSIONS_ROOT, session_processes

SMALL = ["--model", "tutorial", "--epochs", "1", "--image-size", "32", "32", "--batch-size", "4"]


def petal(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([PETAL, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_exports_and_predicts(run: Path, image: Path) -> None:
    exported = petal("export", run, "--quantize", "float32")
    assert exported.returncode == 0, exported.stderr
    predicted = petal("predict", run / "export" / "model-float32.tflite", image)
    assert predicted.returncode == 0 and "  top 3: " in predicted.stdout  # sure or not, it predicted


@pytest.mark.slow
def test_two_ray_workers_train_an_epoch_into_an_ordinary_run_folder_and_name_the_files_they_left_out(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=12)
    broken = [data / name / "broken.jpg" for name in ("blue", "red")]
    for path in broken:
        path.write_bytes(b"not a photo")
    run = tmp_path / "run"
    done = petal("train", data, *SMALL, "--workers", "2", "--out", run)

    assert done.returncode == 0, done.stderr
    assert "epoch 1/1: accuracy" in done.stderr  # stdout stays for the result (and --json)
    assert "left out 2 files that could not be decoded" in done.stderr
    assert {row.split(",")[0] for row in (run / "skipped.csv").read_text().splitlines()[1:]} == {"blue/broken.jpg", "red/broken.jpg"}
    parallel = json.loads((run / "parallel.json").read_text())
    assert parallel["strategy"] == "multi-worker" and parallel["replicas"] == 2 and parallel["global_batch_size"] == 8
    assert parallel["peak_learning_rate"] == 0.002  # the tutorial's 1e-3, scaled linearly
    assert (run / "history.csv").read_text().count("\n") == 2 and (run / "model.keras").exists()
    assert not (run / ".ray-train").exists() and json.loads((run / "timings.json").read_text())["train"] > 0
    assert_exports_and_predicts(run, data / "red" / "img_000.jpg")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=12)
    run = tmp_path / "run"
    script = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from petal.config import TrainConfig
from petal.training.loop import train
train(TrainConfig({str(data)!r}, "tutorial", epochs=1, batch_size=4, image_size=(32, 32), strategy="mirrored",
                  cache_dir={str(tmp_path / "cache")!r}), {str(run)!r}, verbose=0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-2000:]
    parallel = json.loads((run / "parallel.json").read_text())
    assert parallel["strategy"] == "mirrored" and parallel["replicas"] == 2 and parallel["global_batch_size"] == 8
    assert_exports_and_predicts(run, data / "blue" / "img_000.jpg")


@pytest.mark.slow
def test_an_unreachable_cluster_or_too_many_workers_fail_in_one_line_and_write_nothing(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=4)
    started = time.time()
    unreachable = petal("train", data, *SMALL, "--workers", "2", "--address", "127.0.0.1:9", "--out", tmp_path / "a")
    assert unreachable.returncode == 2 and time.time() - started < 60
    [error] = [line for line in unreachable.stderr.splitlines() if line.startswith("petal: error")]
    assert error.startswith("petal: error: cannot reach the Ray cluster at 127.0.0.1:9")
    too_many = petal("train", data, *SMALL, "--workers", "64", "--out", tmp_path / "b")
    assert too_many.returncode == 2 and "--workers 64 is more than the" in too_many.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_dying_worker_fails_the_run_in_one_line_and_the_run_resumes(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=40)
    run = tmp_path / "run"
    command = [PETAL, "train", str(data), "--model", "tutorial", "--epochs", "12", "--image-size", "96", "96",
               "--batch-size", "4", "--workers", "2", "--out", str(run), "--cache-dir", str(tmp_path / "cache")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists():
        assert child.poll() is None and time.time() < deadline, "training ended before a worker could be killed"
        time.sleep(0.2)
    [session] = SESSIONS_ROOT.glob(f"{child.pid}-*")
    workers = [p for p in session_processes(session) if "RayTrainWorker" in " ".join(p.cmdline())]
    workers[-1].kill()
    _, stderr = child.communicate(timeout=300)

    assert child.returncode == 2
    [error] = [line for line in stderr.splitlines() if line.startswith("petal: error:")]
    assert error.startswith("petal: error: a training worker failed: rank ") and error.endswith("(continue with --resume)")
    done_before = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done_before < 12

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "history.csv").read_text().count("\n") == 13 and (run / "model.keras").exists()
