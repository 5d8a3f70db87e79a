"""Kills and full disks at petal's own write points: every state they leave is resumable or cleanly
restartable by the command the message names, and no half-written file is left looking real."""

import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import PETAL, make_folder

from petal import atomic
from petal.config import TrainConfig
from petal.data.cache import DecodeCache
from petal.data.split import load_split
from petal.run_folder import RunFolder
from petal.training.loop import plan_run

TINY = ["--model", "tutorial", "--epochs", "2", "--image-size", "16", "16", "--batch-size", "8"]

# Runs the CLI in a new process that SIGKILLs itself just before petal renames its Nth file whose name
# matches the pattern into place: a kill at one of the code's own atomic write points.
KILL_AT_WRITE = textwrap.dedent("""
    import fnmatch, os, signal, sys
    from pathlib import Path
    pattern, count = sys.argv[1], int(sys.argv[2])
    real_replace, seen = os.replace, [0]
    def replace(src, dst, *args, **kwargs):
        if fnmatch.fnmatch(Path(dst).name, pattern):
            seen[0] += 1
            if seen[0] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
    from petal.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def killed_at_write(pattern: str, args: list, env=None, count: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_AT_WRITE, pattern, str(count), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def petal(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PETAL, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(f"*{atomic.PARTIAL_SUFFIX}")]


@pytest.mark.parametrize("write_point", [
    pytest.param("config.json", marks=pytest.mark.slow), "train.csv",
    pytest.param("shard-*.json", marks=pytest.mark.slow), "epoch-0001.keras",
])
@pytest.mark.slow
def test_a_train_killed_at_a_write_point_resumes_with_the_command_its_message_names(tmp_path, write_point):
    data = make_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    command = ["train", data, *TINY, "--out", run]
    killed = killed_at_write(write_point, command)
    assert killed.returncode == -9, killed.stderr[-800:]
    again = petal(*command)
    if again.returncode:  # the message names --resume, and --resume must work
        assert again.returncode == 2 and "pass --resume to continue it" in again.stderr, again.stderr[-800:]
        again = petal(*command, "--resume")
    assert again.returncode == 0, again.stderr[-800:]
    assert [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert not leftovers(run, tmp_path / "photos")


def test_resume_may_move_the_cache_but_not_change_what_is_trained(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=4)
    config = TrainConfig(str(data), "tutorial", epochs=2, image_size=(16, 16), cache_dir=str(tmp_path / "a"))
    run = RunFolder(tmp_path / "run")
    atomic.write_json(run.config_path, config.to_dict())
    moved = TrainConfig.from_dict({**config.to_dict(), "cache_dir": str(tmp_path / "b")})
    split, start_epoch = plan_run(run, moved, resume=True)  # no epoch recorded yet: starts again
    assert start_epoch == 0 and len(split.train.paths) + len(split.validation.paths) == 12
    longer = TrainConfig.from_dict({**config.to_dict(), "epochs": 3})
    assert plan_run(run, longer, resume=True)[1] == 0  # nothing trained yet: any settings start it again
    run.write_state({"epochs_done": 1, "model": "epoch-0001.keras", "best_epoch": 1, "best_val_accuracy": 0.5})
    with pytest.raises(Exception, match="cannot resume with different settings.*epochs"):
        plan_run(run, longer, resume=True)


def test_a_full_disk_is_one_line_naming_the_file_and_resume_then_finishes(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    command = [PETAL, "train", data, *TINY, "--out", run, "--cache-dir", tmp_path / "cache"]

    def small_files():  # ulimit -f: writes past 2 kB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    full = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert full.returncode == 2, full.stderr[-800:]
    [line] = [line for line in full.stderr.splitlines() if line.startswith("petal: error")]
    assert re.search(r"cannot be written \((File too large|short write: .*)\); [\d,]+ MB free there", line), line
    assert "Traceback" not in full.stderr
    again = petal(*command[1:], "--resume")
    assert again.returncode == 0, again.stderr[-800:]
    assert not leftovers(run, tmp_path / "cache")


def test_the_decode_cache_refuses_before_writing_when_the_disk_cannot_hold_it(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "photos", per_class=2)
    folder = load_split(str(data), 0.5, 1).train
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(Exception, match=r"decode cache needs 0 MB for 3 images and 0 MB are free; .*--resume"):
        DecodeCache(tmp_path / "cache", (16, 16)).load(folder)
    assert not any((tmp_path / "cache").rglob("shard-*"))


def test_a_decode_cache_killed_mid_shard_gives_the_same_pixels_and_leaves_nothing(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    env = {**os.environ, "PETAL_CACHE_DIR": str(tmp_path / "killed")}
    killed = killed_at_write("shard-*.json", ["train", data, *TINY, "--out", tmp_path / "r1"], env=env)
    assert killed.returncode == -9
    assert list((tmp_path / "killed").rglob("shard-*.npy")), "the kill fell between the shard's array and its index"
    folder = load_split(str(data), 0.2, 123).train
    resumed = DecodeCache(tmp_path / "killed", (16, 16)).load(folder)
    clean = DecodeCache(tmp_path / "clean", (16, 16)).load(folder)
    np.testing.assert_array_equal(resumed.gather(np.arange(len(resumed))), clean.gather(np.arange(len(clean))))
    shards = list((tmp_path / "killed").rglob("shard-*.npy"))
    assert all(shard.with_suffix(".json").exists() for shard in shards), "the killed writer's array is gone"
    assert not leftovers(tmp_path / "killed")


@pytest.mark.slow
def test_an_export_killed_while_writing_leaves_no_half_file_in_the_run_or_the_temporary_folder(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    assert petal("train", data, *TINY, "--out", run).returncode == 0
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    killed = killed_at_write("model-float32.tflite", ["export", run, "--quantize", "float32"], env=env)
    assert killed.returncode == -9
    assert not list((run / "export").glob("*.tflite")) if (run / "export").exists() else True
    again = petal("export", run, "--quantize", "float32", env=env)
    assert again.returncode == 0, again.stderr[-800:]
    assert [p.name for p in (run / "export").glob("*.tflite")] == ["model-float32.tflite"]
    assert not leftovers(run) and not list(tmp.glob("petal-export*"))  # TensorFlow's own autograph files may stay


def test_scratch_files_never_match_the_real_suffix_and_only_dead_writers_lose_them(tmp_path):
    with atomic.atomic_path(tmp_path / "model.tflite") as tmp:
        tmp.write_bytes(b"half")
        assert not list(tmp_path.glob("*.tflite")) and tmp.name == "model.tflite"
        assert atomic.remove_partials(tmp_path) == []  # this process is alive: its scratch stays
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / "sub" / f".model.keras.{atomic.owner_tag().rsplit('-', 2)[0]}-{gone.stdout.strip()}-x1y2.partial"
    dead.mkdir(parents=True)
    (dead / "model.keras").write_bytes(b"half")
    assert atomic.remove_partials(tmp_path) == [dead] and not dead.exists()


def test_a_failed_atomic_write_names_the_file_the_caller_asked_for_not_its_scratch_copy(tmp_path):
    from petal import atomic

    (tmp_path / "taken").mkdir()  # a folder where the file should go
    with pytest.raises(IsADirectoryError) as raised:
        atomic.write_text(tmp_path / "taken", "text")
    assert raised.value.filename == str(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no scratch file left beside it


def test_a_folder_that_refuses_the_scratch_copy_is_named_by_the_target_too(tmp_path, monkeypatch):
    def refuse(prefix, suffix, dir):  # a read-only folder (root writes anywhere, so it is simulated)
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x" + suffix))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse)
    with pytest.raises(PermissionError) as raised:
        atomic.write_text(tmp_path / "grid.png", "text")
    assert raised.value.filename == str(tmp_path / "grid.png")


def test_running_out_of_memory_is_one_line_naming_the_size_settings(tmp_path, monkeypatch):
    import tensorflow as tf

    from petal.config import TrainConfig
    from petal.errors import ConfigError, OutOfMemoryError
    from petal.training import loop

    with pytest.raises(ConfigError, match="each from 8 to 8192. Received: image_size=\\(9000, 9000\\)"):
        TrainConfig(str(tmp_path), "tutorial", image_size=(9000, 9000))
    data = make_folder(tmp_path / "photos", per_class=6)

    def exhausted(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[16000000,128]\nmore detail")
    monkeypatch.setattr(loop, "_train", exhausted)
    config = TrainConfig(str(data), "tutorial", image_size=(4000, 4000), epochs=1, batch_size=8)  # 32 is past the batch bound there
    with pytest.raises(OutOfMemoryError) as raised:
        loop.train(config, tmp_path / "run", verbose=0)
    assert str(raised.value) == ("out of memory training tutorial at image size 4000x4000, batch size 8 (OOM when allocating tensor "
                                 "with shape[16000000,128]): use a smaller --image-size or --batch-size in a new --out")


def test_a_folder_is_written_by_one_command_at_a_time_and_the_hold_leaves_nothing_behind(tmp_path):
    from petal.errors import FolderInUseError

    run = tmp_path / "run"
    with atomic.held(run, "train"):
        with pytest.raises(FolderInUseError, match=rf"^{run}: in use by petal train \(pid {os.getpid()} on "):
            with atomic.held(run, "export"):
                pass
    assert not run.exists()  # made for the hold, nothing written: removed again
    run.mkdir()
    (run / "config.json").write_text("{}")
    with atomic.held(run, "train"):
        pass
    assert [p.name for p in run.iterdir()] == ["config.json"]


def test_a_second_training_or_an_export_into_a_run_folder_in_use_is_refused_before_writing(tmp_path):
    from petal.errors import FolderInUseError
    from petal.training.export import export_litert
    from petal.training.loop import train

    data = make_folder(tmp_path / "photos", per_class=6)
    config = TrainConfig.for_model(str(data), "tutorial", epochs=1, image_size=(16, 16), batch_size=8, cache_dir=str(tmp_path / "cache"))
    run = train(config, tmp_path / "run", verbose=0).run.path
    written = sorted(p.relative_to(run) for p in run.rglob("*"))
    with atomic.held(run, "train --resume"):  # as another process training it would
        with pytest.raises(FolderInUseError, match="in use by petal train --resume"):
            train(config, run, resume=True, verbose=0)
        with pytest.raises(FolderInUseError, match="in use by petal train --resume"):
            export_litert(run)
        with pytest.raises(FolderInUseError):  # not "already exists": the hold is checked first
            train(config, run, verbose=0)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == written


def test_a_model_that_is_not_the_one_the_run_folder_describes_is_one_line(tmp_path):
    import json

    from petal.errors import RunFolderError
    from petal.training.loop import train

    data = make_folder(tmp_path / "photos", per_class=6)
    config = TrainConfig.for_model(str(data), "tutorial", epochs=1, image_size=(16, 16), batch_size=8, cache_dir=str(tmp_path / "cache"))
    run = RunFolder(train(config, tmp_path / "run", verbose=0).run.path)
    settings = json.loads(run.config_path.read_text())
    run.config_path.write_text(json.dumps({**settings, "image_size": [32, 32]}))  # another run's config, or an edit
    with pytest.raises(RunFolderError, match=r"config.json: says image size 32x32, model.keras takes 16x16"):
        run.load_model()


def test_a_training_whose_loss_becomes_nan_stops_in_one_line_and_saves_no_model(tmp_path):
    from petal.errors import DivergedError
    from petal.training.loop import train

    data = make_folder(tmp_path / "photos", per_class=6)
    config = TrainConfig.for_model(str(data), "tutorial", epochs=2, image_size=(16, 16), batch_size=8, learning_rate=1e308,
                                   cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DivergedError, match=r"^training diverged: the loss is nan at epoch 1, .* lower --learning-rate"):
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "model.keras").exists() and not RunFolder(tmp_path / "run").history_rows()


def test_a_model_whose_output_is_not_a_number_gives_an_error_per_image_not_a_nan_prediction():
    from PIL import Image

    from petal.runtime.predict import PredictionError, Predictor

    broken = Predictor(lambda batch: np.full((len(batch), 2), np.nan, np.float32), ("a", "b"), (8, 8), description="model.tflite")
    (result,) = broken.predict([Image.new("RGB", (8, 8))])
    assert isinstance(result, PredictionError) and result.reason.startswith("model.tflite: the model's output is not a number")


def test_a_run_folder_or_an_evaluation_inside_the_data_folder_is_refused_before_anything_is_written(tmp_path):
    from petal.errors import ConfigError
    from petal.training.evaluation import evaluate, write_evaluation
    from petal.training.loop import train

    data = make_folder(tmp_path / "photos", per_class=6)
    config = TrainConfig.for_model(str(data), "tutorial", epochs=1, image_size=(16, 16), batch_size=8, cache_dir=str(tmp_path / "cache"))
    files = sorted(data.rglob("*"))
    with pytest.raises(ConfigError, match="the run folder must be outside the data folder"):
        train(config, data / "red" / "run", verbose=0)
    run = train(config, tmp_path / "run", verbose=0).run.path
    with pytest.raises(ConfigError, match="the evaluation must be written outside the data folder"):
        write_evaluation(evaluate(run), data / "red" / "evaluation", data)
    assert sorted(data.rglob("*")) == files  # no chart joins the red photos


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_lock_file_that_is_not_petals_own_is_refused_and_what_it_points_to_left_alone(tmp_path, planted):
    from petal.errors import FolderInUseError

    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("IMPORTANT DATA")
    if planted == "link":
        (run / atomic.LOCK_NAME).symlink_to(victim)
    else:
        os.mkfifo(run / atomic.LOCK_NAME)
    with pytest.raises(FolderInUseError, match=r"\.petal\.lock: .*remove it"):
        with atomic.held(run, "train"):
            pass
    assert victim.read_text() == "IMPORTANT DATA" and os.path.lexists(run / atomic.LOCK_NAME)


def test_the_folders_a_hold_made_are_removed_when_nothing_was_written(tmp_path):
    with atomic.held(tmp_path / "a" / "b" / "c", "train"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_validation_loss_that_is_not_a_number_stops_training_too(tmp_path):
    from petal.errors import DivergedError
    from petal.training.checkpoints import RunRecorder

    recorder = RunRecorder(RunFolder(tmp_path / "run"))
    with pytest.raises(DivergedError, match=r"the validation loss is nan at epoch 3, .*or --precision float32"):
        recorder.record_epochs(None, [{"loss": 0.5, "val_loss": float("nan")}], [1.0], first_epoch=2)


def test_a_resume_of_a_run_that_trained_no_epoch_may_change_the_settings_that_stopped_it(tmp_path):
    from petal.errors import RunFolderError
    from petal.training.loop import train

    data = make_folder(tmp_path / "photos", per_class=6)
    settings = dict(epochs=1, image_size=(16, 16), batch_size=8, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RunFolderError, match="no decodable images"):
        train(TrainConfig.for_model(str(data), "tutorial", max_pixels=1, **settings), tmp_path / "run", verbose=0)
    resumed = train(TrainConfig.for_model(str(data), "tutorial", **settings), tmp_path / "run", resume=True, verbose=0)
    assert len(resumed.history["val_accuracy"]) == 1


def test_a_cache_index_of_another_shape_is_ignored_and_its_images_decoded_again(tmp_path, caplog):
    import logging

    folder = load_split(make_folder(tmp_path / "photos", per_class=3), 0.2, 123).train
    DecodeCache(tmp_path / "cache", (16, 16)).load(folder)
    for index in (tmp_path / "cache").rglob("shard-*.json"):
        index.write_text("{}")
    with caplog.at_level(logging.WARNING):
        again = DecodeCache(tmp_path / "cache", (16, 16)).load(folder)
    assert again.computed == len(folder) and "ignoring unreadable cache index" in caplog.text
