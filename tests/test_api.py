"""The package-level API: every name in `petal.__all__` stays what it names, however many submodules
have been imported, so the README's snippet runs twice in one notebook."""

import importlib
import pkgutil
import types

from conftest import make_folder

import petal


def import_every_submodule() -> None:
    for module in pkgutil.walk_packages(petal.__path__, "petal."):
        if module.name != "petal.__main__":
            importlib.import_module(module.name)


def test_no_exported_name_is_shadowed_by_a_submodule_of_the_same_name():
    import_every_submodule()
    for name in petal.__all__:
        value = getattr(petal, name)
        assert not isinstance(value, types.ModuleType), f"petal.{name} is a module"
        assert getattr(petal, name) is value


def test_train_and_evaluate_can_be_called_twice_after_every_submodule_is_imported(tmp_path):
    import_every_submodule()
    data = make_folder(tmp_path / "photos", per_class=4)
    for attempt in range(2):
        config = petal.TrainConfig(str(data), "tutorial", epochs=1, batch_size=8, image_size=(16, 16))
        run = petal.train(config, tmp_path / f"run-{attempt}", verbose=0).run.path
        assert petal.evaluate(run).accuracy >= 0


def test_the_python_api_is_as_quiet_as_the_command(tmp_path):
    import subprocess
    import sys

    data = make_folder(tmp_path / "photos", per_class=4)
    script = ("import petal; config = petal.TrainConfig(%r, 'tutorial', epochs=1, batch_size=8, image_size=(16, 16)); "
              "petal.train(config, %r, verbose=0)") % (str(data), str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stderr
    noisy = [line for line in result.stderr.splitlines() if "oneDNN" in line or "cpu_feature_guard" in line or len(line) > 300]
    assert noisy == []


def test_train_takes_keras_callbacks_and_writes_tensorboard_logs(tmp_path):
    import keras

    class CountEpochs(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            CountEpochs.epochs += 1

    data = make_folder(tmp_path / "photos", per_class=4)
    config = petal.TrainConfig(str(data), "tutorial", epochs=2, batch_size=8, image_size=(16, 16))
    run = petal.train(config, tmp_path / "run", verbose=0, callbacks=[CountEpochs()]).run
    assert CountEpochs.epochs == 2
    assert list((run.path / "tensorboard").rglob("events.out.tfevents.*"))
