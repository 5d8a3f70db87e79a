"""A killed training run loses no finished epoch and continues where it stopped."""

import csv
import json
import signal
import subprocess
import time

import pytest
from conftest import PETAL, make_folder

from petal import atomic


def test_sigkill_during_epoch_two_then_resume_trains_three_epochs_in_all_and_counts_both_processes_time(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=40)
    run = tmp_path / "run"
    command = [PETAL, "train", str(data), "--model", "tutorial", "--epochs", "3", "--out", str(run),
               "--image-size", "96", "96", "--batch-size", "4"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["epochs_done"] >= 1):
        assert child.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = json.loads(state.read_text())
    killed_decode = json.loads((run / "checkpoint" / "timings.json").read_text())["decode"]  # a finished stage is recorded
    clock = run / "checkpoint" / "clock.json"  # written every few seconds: absent if the kill came sooner
    killed_seconds = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    assert killed["epochs_done"] < 3
    assert not (run / "model.keras").exists()
    export = subprocess.run([PETAL, "export", str(run)], capture_output=True, text=True)
    assert export.returncode == 2 and f"continue it: petal train {data} --out {run} --resume" in export.stderr

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)

    assert resumed.returncode == 0, resumed.stderr
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    resumed_epochs = sum(float(row["seconds"]) for row in history[killed["epochs_done"]:])
    seconds = json.loads((run / "environment.json").read_text())["seconds"]
    assert seconds >= killed_seconds + resumed_epochs  # the run's time, not the last process's
    assert json.loads((run / "timings.json").read_text())["decode"] > killed_decode  # both processes' decoding
    assert json.loads(state.read_text())["epochs_done"] == 3
    import keras

    model = keras.saving.load_model(run / "model.keras")
    assert model.count_params() > 0


def test_resume_needs_no_option_repeated_and_a_finished_run_is_left_as_it_is(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    options = ["--model", "tutorial", "--epochs", "1", "--image-size", "16", "16", "--learning-rate", "0.01"]
    assert subprocess.run([PETAL, "train", str(data), "--out", str(run), *options], capture_output=True).returncode == 0
    assert subprocess.run([PETAL, "export", str(run), "--quantize", "float32"], capture_output=True).returncode == 0
    written = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}

    again = subprocess.run([PETAL, "train", str(data), "--out", str(run), "--resume"], capture_output=True, text=True)

    assert again.returncode == 0, again.stderr
    assert "finished already" in again.stderr and "Trained in" in again.stdout
    assert again.stdout.splitlines()[-1] == f"Next: petal serve {run / 'export' / 'model-float32.tflite'}"  # exported already
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == written


def test_an_interrupted_train_says_how_to_continue(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=40)
    run = tmp_path / "run"
    child = subprocess.Popen([PETAL, "train", str(data), "--model", "tutorial", "--epochs", "50", "--image-size", "64", "64",
                              "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # pytest-xdist's workers ignore it
    deadline = time.time() + 300
    while not (run / "checkpoint" / "state.json").exists():
        assert child.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)

    assert child.returncode == 130
    assert stderr.splitlines()[-1] == f"petal: interrupted; continue with: petal train {data} --out {run} --resume"


def test_resume_with_other_settings_is_refused(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    common = [PETAL, "train", str(data), "--model", "tutorial", "--out", str(run), "--image-size", "16", "16"]
    assert subprocess.run(common + ["--epochs", "1"], capture_output=True).returncode == 0
    result = subprocess.run(common + ["--epochs", "1", "--learning-rate", "0.01", "--resume"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot resume with different settings" in result.stderr and "learning_rate" in result.stderr


def test_atomic_write_that_fails_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_the_old_file_whole(tmp_path):
    target = tmp_path / "history.csv"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


@pytest.mark.slow
def test_deterministic_runs_with_the_same_seed_have_the_same_history(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=10)
    histories = []
    for name in ("a", "b"):
        run = tmp_path / name
        command = [PETAL, "train", str(data), "--model", "tutorial-augmented", "--epochs", "2", "--out", str(run),
                   "--image-size", "32", "32", "--batch-size", "8", "--deterministic"]
        assert subprocess.run(command, capture_output=True).returncode == 0
        with open(run / "history.csv", newline="") as f:
            histories.append([{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)])
    for first, second in zip(*histories):
        assert first.keys() == second.keys()
        for key in first:
            assert abs(first[key] - second[key]) <= 1e-6, key


@pytest.mark.parametrize("keras_prints_epochs, logged", [
    (False, ["epoch 5 of 10: val accuracy 0.5000, 40 s",  # no estimate from a tracing epoch
             "epoch 6 of 10: val accuracy 0.5000, 10 s; the run ends in about 40 s",  # 4 epochs left at 10 s
             "epoch 7 of 10: val accuracy 0.5000, 10 s; the run ends in about 30 s"]),
    (True, ["the run ends in about 40 s"]),  # beside Keras's own epoch lines: the estimate alone, before epoch 7
])
def test_the_run_end_estimate_leaves_out_each_fits_first_epoch_which_traces_the_graph(tmp_path, monkeypatch, caplog,
                                                                                       keras_prints_epochs, logged):
    from petal.run_folder import RunFolder
    from petal.training import checkpoints
    from petal.training.checkpoints import RunRecorder

    recorder = RunRecorder(RunFolder(tmp_path / "run"), total_epochs=10, keras_prints_epochs=keras_prints_epochs)
    monkeypatch.setattr(recorder, "record_epochs", lambda *args, **kwargs: None)
    clock = iter([0.0, 40.0, 40.0, 50.0, 50.0, 60.0])  # epochs of 40 s (tracing), 10 s and 10 s
    monkeypatch.setattr(checkpoints.time, "perf_counter", lambda: next(clock))
    caplog.set_level("INFO", logger="petal.training.checkpoints")

    recorder.on_train_begin()
    for epoch in range(4, 7):
        recorder.on_epoch_begin(epoch)
        recorder.on_epoch_end(epoch, {"val_accuracy": 0.5})

    assert [r.getMessage() for r in caplog.records] == logged


def test_the_run_clock_records_a_killed_process_time_as_it_goes(tmp_path, monkeypatch):
    from petal.run_folder import RunFolder
    from petal.training import checkpoints
    from petal.training.checkpoints import RunClock

    monkeypatch.setattr(checkpoints, "HEARTBEAT_S", 0.05)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config_path.write_text("{}")  # the clock writes only into a run folder --resume can read
    with RunClock(run):
        time.sleep(0.5)
        recorded = json.loads((run.checkpoint_dir / "clock.json").read_text())["seconds"]  # what a kill -9 now leaves
        assert recorded >= 0.3
    resumed = RunClock(run)
    assert resumed.earlier >= 0.5 and resumed.seconds() >= 0.5


def test_a_stopped_run_with_a_damaged_config_still_says_it_is_unfinished(tmp_path):
    from petal.errors import RunFolderError
    from petal.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config_path.write_text("{damaged")
    with pytest.raises(RunFolderError, match=r"not a finished run folder \(model.keras is missing\); .*petal train DATA_DIR --out"):
        run.require("model.keras")
