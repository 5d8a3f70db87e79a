"""The default model: pretrained MobileNetV2 whose weights ship inside the package, so `petal train DIR`
needs no network, and the order in which a weights file is chosen (--weights, Keras's cache, the shipped copy)."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PETAL

from petal.cli import malloc_arenas
from petal.config import TrainConfig
from petal.errors import WeightsError
from petal.registry import DEFAULT_MODEL, get_model_entry
from petal.sample_data import sample_folder
from petal.training.models import backbones
from petal.training.models.backbones import SHIPPED_WEIGHTS, mobilenet_v2_weights_file, resolve_weights, shipped_weights

SHIPPED = mobilenet_v2_weights_file((224, 224))


def test_the_default_is_pretrained_mobilenet_v2_fine_tuned():
    entry = get_model_entry(DEFAULT_MODEL)
    config = TrainConfig.for_model("photos", DEFAULT_MODEL)
    assert DEFAULT_MODEL == "mobilenet-v2" and entry.pretrained
    assert config.fine_tune_blocks > 0 and config.image_size == (224, 224)


def test_the_shipped_file_is_in_the_package_with_its_provenance_and_licence():
    path = shipped_weights(SHIPPED)
    assert path.stat().st_size == 9_421_704
    assert SHIPPED_WEIGHTS[SHIPPED] in (path.parent / "README.md").read_text()
    assert "Apache License" in (path.parent / "LICENSE").read_text()


def test_weights_precedence_given_file_then_keras_cache_then_shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert resolve_weights("my.h5", SHIPPED, SHIPPED) == "my.h5"
    assert resolve_weights(None, SHIPPED, SHIPPED) is None  # random weights, e.g. to receive trained ones
    assert resolve_weights("imagenet", SHIPPED, SHIPPED) == str(backbones.SHIPPED_WEIGHTS_DIR / SHIPPED)
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / SHIPPED).write_bytes(b"Keras's own download")
    assert resolve_weights("imagenet", SHIPPED, SHIPPED) == "imagenet"  # Keras loads its own file


def test_a_shipped_file_that_was_altered_is_refused_in_one_line(tmp_path, monkeypatch):
    altered = tmp_path / SHIPPED
    shutil.copy(backbones.SHIPPED_WEIGHTS_DIR / SHIPPED, altered)
    with open(altered, "r+b") as f:
        f.seek(5000)
        f.write(b"\x00" * 8)
    monkeypatch.setattr(backbones, "SHIPPED_WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match=r"sha256 .* is not the shipped file's .*reinstall petal or pass --weights FILE"):
        shipped_weights(SHIPPED)
    monkeypatch.setattr(backbones, "SHIPPED_WEIGHTS_DIR", tmp_path / "gone")
    with pytest.raises(WeightsError, match="missing from this petal install"):
        shipped_weights(SHIPPED)


def test_petal_train_with_no_model_named_trains_the_default_offline_from_the_shipped_weights(tmp_path):
    """A new process, HOME an empty folder (no Keras cache) and proxies pointing nowhere: the default
    model trains its head and fine-tunes, from the weights inside the package, without a download."""
    data = tmp_path / "photos"
    for class_dir in sorted(sample_folder().iterdir())[:3]:
        (data / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.glob("*.jpg"))[:8]:
            shutil.copy(photo, data / class_dir.name)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "KERAS_HOME": str(home / ".keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "PETAL_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "run"
    result = subprocess.run([PETAL, "train", str(data), "--epochs", "1", "--fine-tune-epochs", "1", "--image-size", "96", "96",
                             "--batch-size", "8", "--out", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == DEFAULT_MODEL and config["fine_tune_blocks"] > 0
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2  # one head epoch, one fine-tuning epoch
    assert (run / "model.keras").is_file()
    assert not any(Path(home).rglob("*.h5")), "nothing may be downloaded into the Keras cache"


ARENAS_AFTER_THREADS = """
import ctypes, os, sys, tempfile, threading
from petal.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
def allocate():
    blocks = [bytearray(300_000) for _ in range(20)]
    barrier.wait()  # every thread holds its arena at once
threads = [threading.Thread(target=allocate) for _ in range(8)]
barrier = threading.Barrier(len(threads))
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
path = os.path.join(tempfile.mkdtemp(), "malloc.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream)); libc.fclose(ctypes.c_void_p(stream))
child = os.popen(sys.executable + " -c 'import os; print(os.environ.get(\\"MALLOC_ARENA_MAX\\"))'").read().strip()
print(child, open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("user_choice, at_most", [(None, malloc_arenas()), ("12", 12)])
def test_the_petal_command_and_its_children_keep_malloc_to_an_arena_per_core_unless_the_user_chose(user_choice, at_most):
    # an arena per thread kept 100 MB more peak memory training the default model from a cold cache
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if user_choice:
        env["MALLOC_ARENA_MAX"] = user_choice
    out = subprocess.run([sys.executable, "-c", ARENAS_AFTER_THREADS], env=env, capture_output=True, text=True, check=True).stdout
    in_child, arenas = out.split()[-2], int(out.split()[-1])
    assert arenas <= at_most
    assert in_child == (user_choice or str(malloc_arenas()))  # what petal starts (a local Ray cluster's workers) gets the same cap
    assert arenas > malloc_arenas() or not user_choice or malloc_arenas() >= 8  # the user's choice is left alone
