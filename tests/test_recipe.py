"""The training recipe around the default model: config resolution, augmentation, precision, early stopping."""

import json
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PETAL, make_folder
from PIL import Image

from petal.config import AUGMENTATIONS, ExportConfig, TrainConfig
from petal.data.decode import decode_image
from petal.errors import ConfigError
from petal.registry import get_model_entry
from petal.runtime.predict import Predictor
from petal.training import precision
from petal.training.augment import build_augmentation
from petal.training.checkpoints import RunRecorder
from petal.training.export import export_litert
from petal.training.loop import train
from petal.training.optimization import dtype_policy, learning_rate


def test_a_models_recipe_fills_the_config_and_the_users_settings_win():
    config = TrainConfig.for_model("photos", "petal-resnet", epochs=5, learning_rate=None)
    recipe = get_model_entry("petal-resnet").recipe
    assert config.epochs == 5
    assert config.learning_rate == recipe["learning_rate"]
    assert config.image_size == recipe["image_size"] and config.optimizer == "adamw"
    tutorial = TrainConfig.for_model("photos", "tutorial")
    assert (tutorial.epochs, tutorial.image_size, tutorial.optimizer, tutorial.augmentation) == (10, (180, 180), "adam", "none")


@pytest.mark.parametrize("changes", [{"optimizer": "sgd"}, {"weight_decay": 0.1}, {"lr_schedule": "step"},
                                     {"warmup_epochs": 15}, {"label_smoothing": 1.0}, {"augmentation": "cutout"},
                                     {"precision": "int8"}, {"mixup": -1.0}, {"cutmix": 2.0}, {"max_pixels": 0}])
def test_config_refuses_nonsense_recipes(changes):
    with pytest.raises(ConfigError):
        TrainConfig("photos", "tutorial", **changes)


@pytest.mark.parametrize("policy", list(AUGMENTATIONS))
def test_every_augmentation_keeps_shape_and_value_range(policy):
    augment = build_augmentation(policy, (48, 48), mixup=0.2 if policy == "crop-flip" else 0.0)
    images = tf.random.uniform([6, 48, 48, 3], 0, 255)
    labels = tf.one_hot([0, 1, 2, 0, 1, 2], 3)
    if augment is None:
        assert policy == "none"
        return
    out, mixed = augment(images, labels)
    assert out.shape == (6, 48, 48, 3)
    assert float(tf.reduce_min(out)) >= -1e-3 and float(tf.reduce_max(out)) <= 255.001
    np.testing.assert_allclose(tf.reduce_sum(mixed, axis=1), 1.0, atol=1e-5)


def test_mixup_mixes_the_labels_too():
    augment = build_augmentation("none", (16, 16), mixup=1.0)
    _, labels = augment(tf.random.uniform([32, 16, 16, 3], 0, 255), tf.one_hot(np.arange(32) % 2, 2))
    assert 0.0 < float(tf.reduce_min(tf.reduce_max(labels, axis=1))) < 1.0


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = learning_rate("cosine", peak_rate=0.01, epochs=10, warmup_epochs=2, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 10, 20, 60, 100)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.005) and rates[2] == pytest.approx(0.01)
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0.0, abs=1e-9)


def test_with_more_replicas_the_peak_rate_scales_linearly_unless_told_not_to():
    config = TrainConfig("photos", "tutorial", learning_rate=0.001, strategy="multi-worker", workers=4)
    assert config.learning_rate_for(config.learning_rate, 4) == pytest.approx(0.004)
    config.lr_scaling = "none"
    assert config.learning_rate_for(config.learning_rate, 4) == pytest.approx(0.001)


def test_auto_precision_follows_the_cpus_features(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert precision.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert precision.resolve_precision("auto") == "float32"
    assert precision.resolve_precision("float32") == "float32"


def test_mixed_precision_training_saves_a_float32_model_and_early_stopping_keeps_the_best_epoch(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=10)
    config = TrainConfig.for_model(str(data), "petal-resnet", epochs=4, image_size=(32, 32), batch_size=8,
                                   precision="bfloat16", early_stopping=1, warmup_epochs=0)

    result = train(config, tmp_path / "run", verbose=0)

    model = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    history = result.history["val_accuracy"]
    assert state["best_epoch"] == 1 + int(np.argmax(history))
    assert len(history) == 4 or len(history) == state["best_epoch"] + 1  # stopped one epoch after the best


def test_a_short_run_of_a_recipe_with_warm_up_shortens_the_warm_up_unless_it_was_asked_for():
    assert TrainConfig.for_model("photos", "petal-resnet", epochs=1).warmup_epochs == 0
    assert TrainConfig.for_model("photos", "petal-resnet", epochs=2).warmup_epochs == 1
    with pytest.raises(ConfigError, match="warm-up must be 0 or more epochs, and shorter than the run"):
        TrainConfig.for_model("photos", "petal-resnet", epochs=2, warmup_epochs=2)


@pytest.mark.parametrize("workers", [0, -1])
def test_too_few_workers_are_refused_for_their_number_not_their_strategy(workers):
    with pytest.raises(ConfigError, match=f"workers must be at least 1. Received: workers={workers}$"):
        TrainConfig.for_model("photos", "tutorial", workers=workers, strategy="multi-worker")


def test_no_fine_tuning_epochs_is_refused_for_what_was_given_not_for_a_derived_warm_up():
    with pytest.raises(ConfigError, match="fine_tune_epochs=0") as refused:
        TrainConfig.for_model("photos", "mobilenet-v2", fine_tune_epochs=0)
    assert "warmup" not in str(refused.value) and "blocks 0" in str(refused.value)


def test_cropping_augmentations_output_the_training_size_whatever_the_image_size():
    augment = build_augmentation("crop-flip-color", (24, 32))
    out, _ = augment(tf.random.uniform([4, 48, 48, 3], 0, 255), tf.one_hot([0, 1, 0, 1], 2))
    assert out.shape == (4, 24, 32, 3)


def test_training_on_smaller_crops_resumes_and_saves_the_model_at_its_image_size(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "photos", per_class=10)
    config = TrainConfig.for_model(str(data), "petal-resnet", epochs=2, image_size=(40, 40), train_image_size=(32, 32),
                                   batch_size=8, precision="float32", warmup_epochs=0)
    record = RunRecorder.on_epoch_end

    def killed_after_recording(self, epoch, logs=None):
        record(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "on_epoch_end", killed_after_recording)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", verbose=0)
    monkeypatch.undo()
    result = train(config, tmp_path / "run", resume=True, verbose=0)  # from a checkpoint built for any input size

    assert len(result.history["val_accuracy"]) == 2
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert tuple(model.input_shape) == (None, 40, 40, 3)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_image_size"] == [32, 32]


def test_a_training_size_of_its_own_needs_random_crops_and_a_model_that_takes_any_size(tmp_path):
    with pytest.raises(ConfigError, match="random training crops"):
        TrainConfig("photos", "petal-resnet", image_size=(64, 64), train_image_size=(48, 48), augmentation="tutorial")
    config = TrainConfig.for_model(str(make_folder(tmp_path / "photos", per_class=2)), "tutorial", image_size=(64, 64),
                                   train_image_size=(48, 48), augmentation="crop-flip")
    with pytest.raises(ConfigError, match="takes one input size only"):
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_another_image_size_keeps_the_recipes_ratio_of_training_crop_to_test_size():
    recipe = get_model_entry("petal-resnet").recipe
    config = TrainConfig.for_model("photos", "petal-resnet", image_size=(recipe["image_size"][0] * 2, recipe["image_size"][1]))
    assert config.train_image_size == (recipe["train_image_size"][0] * 2, recipe["train_image_size"][1])
    assert TrainConfig.for_model("photos", "petal-resnet", image_size=(64, 64), train_image_size=(64, 64)).train_image_size == (64, 64)


@pytest.mark.parametrize("policy", ["tutorial", "randaugment"])
def test_augmentation_stays_float32_under_a_mixed_precision_run(policy):
    with dtype_policy("mixed_bfloat16"):
        augment = build_augmentation(policy, (32, 32), mixup=0.2, cutmix=1.0)
        images, labels = augment(tf.random.uniform([4, 32, 32, 3], 0, 255), tf.one_hot([0, 1, 0, 1], 2))
    assert images.dtype == tf.float32 and labels.dtype == tf.float32


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """A one-epoch run of the default model, whose recipe averages each image with its mirror image."""
    root = tmp_path_factory.mktemp("flipped")
    data = make_folder(root / "photos", per_class=6)
    config = TrainConfig.for_model(str(data), "petal-resnet", epochs=1, image_size=(40, 40), batch_size=8)
    assert config.test_time_flip  # the default model's recipe
    run = train(config, root / "run", verbose=0).run.path
    export_litert(run, ExportConfig(variants=("float32",)))
    return data, run


def test_with_test_time_flips_a_photo_and_its_mirror_image_get_the_same_answer_from_keras_and_litert(flipped_run):
    data, run = flipped_run
    pixels = decode_image(next((data / "red").iterdir()), (40, 40))
    photo, mirrored = Image.fromarray(pixels), Image.fromarray(np.ascontiguousarray(pixels[:, ::-1]))
    for model in (run, run / "export" / "model-float32.tflite"):
        original, mirror = Predictor.load(model).predict([photo, mirrored])
        np.testing.assert_allclose(original.probabilities, mirror.probabilities, atol=1e-5)


def test_a_new_process_loads_the_flipped_model_keras_for_predict_and_evaluate(flipped_run):
    """Only training imported the flip layers once: `petal predict RUN` and `petal evaluate RUN` crashed."""
    data, run = flipped_run
    predicted = subprocess.run([PETAL, "predict", run, next((data / "red").iterdir())], capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr
    assert "  top 3: " in predicted.stdout  # "most likely ..." or, for this barely trained model, "not sure: ..."
    evaluated = subprocess.run([PETAL, "evaluate", run], capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (run / "evaluation" / "keras" / "metrics.json").exists()


def test_test_time_flip_is_refused_for_a_pretrained_backbone_before_anything_is_written(tmp_path):
    config = TrainConfig.for_model(str(make_folder(tmp_path / "photos", per_class=2)), "mobilenet-v1-0.25", test_time_flip=True)
    with pytest.raises(ConfigError, match="test-time-flip is for models trained from scratch"):
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
