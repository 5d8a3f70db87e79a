"""`pip install petal` without extras is enough to predict from an exported `.tflite`, and no more."""

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, exported_tiny_run, make_folder, make_image

from petal.config import ExportConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def light_env(tmp_path_factory):
    """A new virtual environment with petal installed from this checkout, without extras."""
    root = tmp_path_factory.mktemp("light")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr
    return root / "venv" / "bin"


@pytest.fixture(scope="module")
def lone_tflite(tmp_path_factory):
    """An exported int8 `.tflite`, copied alone into an empty folder."""
    root = tmp_path_factory.mktemp("model")
    run = exported_tiny_run(root, ExportConfig(variants=("int8",), int8_io="uint8"))
    alone = root / "alone" / "flowers.tflite"
    alone.parent.mkdir()
    shutil.copy(run / "export" / "model-int8.tflite", alone)
    return alone


@pytest.mark.quick
def test_the_light_install_has_no_tensorflow_keras_or_matplotlib(light_env):
    for module in ("tensorflow", "keras", "matplotlib"):
        probe = subprocess.run([light_env / "python", "-c", f"import {module}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{module} was installed without the [train] extra"


@pytest.mark.quick
def test_the_light_install_predicts_with_the_labels_inside_the_file(light_env, lone_tflite, tmp_path):
    photo = make_image(tmp_path / "query.jpg", CLASS_COLOURS["green"], seed=3)
    result = subprocess.run([light_env / "petal", "predict", lone_tflite, photo], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo} most likely belongs to green with a ")


def test_the_light_install_says_in_one_line_how_to_get_training(light_env, tmp_path):
    data = make_folder(tmp_path / "photos", per_class=3)
    result = subprocess.run([light_env / "petal", "train", data], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("petal: error: petal train needs ") and line.endswith("pip install 'petal-vision[train]'")


def test_the_light_install_lists_the_models_and_explains_every_command(light_env):
    models = subprocess.run([light_env / "petal", "models"], capture_output=True, text=True, timeout=60)
    assert models.returncode == 0, models.stderr
    assert "mobilenet-v2" in models.stdout and "(default)" in models.stdout and "petal-resnet" in models.stdout
    usage = subprocess.run([light_env / "petal", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "predict" in usage.stdout, usage.stderr


def test_native_notices_are_hidden_while_python_progress_and_log_lines_still_show():
    # what TensorFlow's C++ prints goes to fd 2 directly; tqdm and logging write through sys.stderr
    script = """
import logging, os, sys
from petal.runtime.native_log import native_log_silenced
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
with native_log_silenced():
    os.write(2, b"I0000 oneDNN custom operations are on\\n")
    sys.stderr.write("converting: 50%\\n")
    logging.getLogger("petal").info("converted float32 in 1.0 s")
sys.stderr.write("after\\n")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["converting: 50%", "converted float32 in 1.0 s", "after"]
