"""The install boundaries hold: the TF-free packages import without TensorFlow, Keras or matplotlib, so
the light install (no extras) predicts, serves, lists models and reads folders."""

import pkgutil
import subprocess
import sys

import pytest

import petal
import petal.data
import petal.runtime

HEAVY = ("tensorflow", "keras", "matplotlib", "ray")
TF_FREE = ["petal", "petal.cli", "petal.config", "petal.registry", "petal.run_folder", "petal.atomic", "petal.errors",
           "petal.training", "petal.scale"]
TF_FREE += [m.name for package in (petal.data, petal.runtime) for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")]


@pytest.mark.parametrize("module", TF_FREE)
def test_importing_a_tf_free_module_loads_no_heavy_library(module):
    probe = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"importing {module} loaded {', '.join(loaded)}"


def test_the_model_list_and_recipes_are_read_without_keras():
    probe = ("import sys; from petal.config import TrainConfig; c = TrainConfig.for_model('photos', 'mobilenet-v2'); "
             "print(c.image_size, c.fine_tune_blocks, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    assert out == "(224, 224) 8 False"
