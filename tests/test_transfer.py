"""Pretrained backbones: weights from a file, cached embeddings, fine-tuning, offline errors, export.

A real ImageNet file is not needed: a MobileNet v1 (alpha 0.25) with random weights, saved to a file,
stands in for it and goes through `--weights` like a downloaded one.
"""

import json
import logging
import os
import re
import subprocess
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import PETAL, make_folder

from petal.cli import main
from petal.config import ExportConfig, TrainConfig
from petal.errors import ConfigError, WeightsError
from petal.registry import create_model, get_model_entry, list_models
from petal.run_folder import RunFolder
from petal.runtime.metadata import read_metadata
from petal.runtime.predict import Predictor
from petal.training.export import export_litert
from petal.training.loop import train
from petal.training.models.backbones import (
    BACKBONE_LAYER,
    backbone_blocks,
    fine_tuning_model,
    fold_batch_norm,
    load_backbone,
    unfreeze_top_blocks,
)

MODEL = "mobilenet-v1-0.25"
SIZE = (32, 32)


def random_backbone_weights(path: Path, seed: int) -> Path:
    """A MobileNet v1 0.25 saved as a user would pass it to --weights, "pretrained" for a few seconds to
    tell which colour channel dominates a noisy patch: like ImageNet weights, it brings features that
    matter for the generated photos, with batch-norm statistics that fit them."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (768, 1, 1, 3))
    patches = np.clip(colours + rng.uniform(-40, 40, (768, *SIZE, 3)), 0, 255).astype("float32") / 127.5 - 1
    backbone = load_backbone(keras.applications.MobileNet, SIZE, None, alpha=0.25)
    pretraining = keras.Sequential([backbone, keras.layers.Dense(3)])
    pretraining.compile(optimizer=keras.optimizers.Adam(3e-3),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pretraining.fit(patches, colours.reshape(-1, 3).argmax(axis=1), epochs=4, batch_size=32, verbose=0)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # moving statistics := one batch's, as if pretraining had run long
    backbone(patches[:256], training=True)
    backbone.save_weights(path)
    return path


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return random_backbone_weights(tmp_path_factory.mktemp("weights") / "random-mobilenet.weights.h5", seed=7)


def transfer_config(data: Path, weights: Path, **settings) -> TrainConfig:
    return TrainConfig.for_model(str(data), MODEL, weights=str(weights), **{"image_size": SIZE, "epochs": 8, "batch_size": 8, **settings})


def test_the_recipe_records_input_size_and_preprocessing(tmp_path):
    config = TrainConfig.for_model(str(tmp_path), MODEL)
    assert config.image_size == (224, 224)
    assert config.preprocessing == get_model_entry(MODEL).preprocessing == "x / 127.5 - 1, inside the model"
    assert get_model_entry("efficientnet-b0").preprocessing != config.preprocessing


def test_second_identical_run_computes_no_embeddings(tmp_path, weights_file, caplog):
    data = make_folder(tmp_path / "photos", per_class=12)

    def petal_train(out: Path) -> RunFolder:
        command = ["train", str(data), "--model", MODEL, "--weights", str(weights_file), "--image-size", "32", "32",
                   "--epochs", "8", "--batch-size", "8", "--out", str(out)]
        assert main(command) == 0
        return RunFolder(out)

    with caplog.at_level(logging.INFO, logger="petal.training.embeddings"):
        first = petal_train(tmp_path / "first")
    assert "computed 29 embeddings, 0 read from the embedding cache" in caplog.text  # training split: 29 of 36
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="petal.training.embeddings"):
        second = petal_train(tmp_path / "second")

    assert "computed 0 embeddings, 29 read from the embedding cache" in caplog.text
    assert "computing" not in caplog.text
    assert second.history()["val_accuracy"] == first.history()["val_accuracy"]  # the same embeddings, the same head
    assert json.loads((second / "timings.json").read_text())["embeddings"] < 5 and len(second.history()["val_accuracy"]) == 8


@pytest.mark.slow
def test_other_weights_are_other_embeddings(tmp_path, weights_file, caplog):
    data = make_folder(tmp_path / "photos", per_class=6)
    train(transfer_config(data, weights_file), tmp_path / "a", verbose=0)
    other = random_backbone_weights(tmp_path / "other.weights.h5", seed=8)
    with caplog.at_level(logging.INFO, logger="petal.training.embeddings"):
        train(transfer_config(data, other), tmp_path / "b", verbose=0)
    assert "computed 0 embeddings" not in caplog.text


def test_fine_tuning_trains_the_top_blocks_and_keeps_batch_norm_frozen(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=8)
    config = transfer_config(data, weights_file, fine_tune_blocks=2, fine_tune_epochs=2)
    result = train(config, tmp_path / "run", verbose=0)

    assert len(result.history["val_accuracy"]) == 8 + 2
    trained = keras.saving.load_model(result.run.path / "model.keras").get_layer(BACKBONE_LAYER)
    original = load_backbone(keras.applications.MobileNet, SIZE, str(weights_file), alpha=0.25)
    changed = {
        layer.name
        for layer, before in zip(trained.layers, original.layers)
        if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before.get_weights()))
    }
    assert changed == {"conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"}


def test_unfreezing_counts_blocks_from_the_top_and_never_batch_norm():
    classifier = create_model(MODEL, 3, SIZE, weights=None).classifier
    blocks = backbone_blocks(classifier, get_model_entry(MODEL).block_pattern)
    assert len(blocks) == 13 and blocks[-1][0].name == "conv_dw_13"

    unfreeze_top_blocks(classifier, get_model_entry(MODEL).block_pattern, 1)
    trainable = {layer.name for layer in classifier.get_layer(BACKBONE_LAYER).layers if layer.trainable and layer.weights}
    assert trainable == {"conv_dw_13", "conv_pw_13"}


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=4)
    config = TrainConfig.for_model(str(data), "mobilenet-v1-0.5", weights=str(weights_file), image_size=SIZE, epochs=1)
    with pytest.raises(WeightsError, match="random-mobilenet.weights.h5: not weights of MobileNet"):
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [entry.name for entry in list_models() if entry.pretrained and entry.name != "mobilenet-v2"])
def test_every_backbone_offline_names_the_weights_file_keras_would_download(name, tmp_path, monkeypatch):
    """Every backbone but the default's, whose weights ship with petal (tests/test_default_model.py)."""
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", no_network)
    with pytest.raises(WeightsError) as error:
        create_model(name, 3, (224, 224))
    file_name = re.search(r"pretrained weights (\S+) are not in", str(error.value))[1]
    assert file_name.endswith(".h5") and "no_top" in file_name.replace("notop", "no_top")
    assert str(tmp_path / "models") in str(error.value) and "--weights FILE" in str(error.value)


@pytest.mark.parametrize("weights", [None, "missing.h5"])
def test_without_network_or_file_training_stops_in_one_line_and_writes_nothing(tmp_path, weights):
    data = make_folder(tmp_path / "photos", per_class=4)
    run = tmp_path / "run"
    offline = {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home"), "https_proxy": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    command = [PETAL, "train", str(data), "--model", MODEL, "--out", str(run)] + (["--weights", weights] if weights else [])
    done = subprocess.run(command, env=offline, capture_output=True, text=True, timeout=300)

    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("petal:")]
    assert len(errors) == 1, done.stderr
    if weights:
        assert errors[0] == "petal: error: missing.h5: no such weights file"
    else:
        assert "mobilenet_2_5_224_tf_no_top.h5" in errors[0] and "--weights FILE" in errors[0]
        assert str(tmp_path / "keras-home" / "models") in errors[0]
    assert not run.exists()
    assert "Downloading" not in done.stdout


def test_int8_transfer_model_passes_the_gate_and_predicts_with_its_labels(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=20)
    run = train(transfer_config(data, weights_file, epochs=20), tmp_path / "run", verbose=0).run.path
    report = export_litert(run, ExportConfig(variants=("int8",), calibration_images=30))

    assert report.variants[0].passed, report.variants[0].failure
    assert report.keras_accuracy == 1.0
    tflite = run / "export" / "model-int8.tflite"
    assert read_metadata(tflite)["preprocessing"]["model_input"] == "x / 127.5 - 1, inside the model"
    predictor = Predictor.load(tflite)
    [prediction] = predictor.predict([data / "red" / "img_000.jpg"])
    assert predictor.class_names == ("blue", "green", "red") and prediction.label == "red"


def _conv_bn_model(rng):
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=True, name="depthwise")(x)
    x = keras.layers.BatchNormalization(center=False, name="depthwise_bn")(x)
    shared = keras.layers.Conv2D(8, 1, use_bias=False, name="shared")(x)  # read twice: must stay as it is
    y = keras.layers.BatchNormalization(scale=False, name="shared_bn")(shared)
    x = keras.layers.Add()([y, shared])
    inner = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=BACKBONE_LAYER)
    outer_in = keras.Input((12, 12, 3))
    model = keras.Model(outer_in, inner(keras.layers.Rescaling(1 / 255)(outer_in)))
    for layer in inner.layers:  # statistics far from 0 and 1, as after pretraining
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.2, 3.0, w.shape).astype("float32") if "variance" in w.path or "gamma" in w.path
                               else rng.normal(0, 2, w.shape).astype("float32") for w in layer.weights])
    return model


def test_folding_batch_norm_into_convolutions_keeps_inference_outputs():
    rng = np.random.default_rng(0)
    model = _conv_bn_model(rng)
    folded = fold_batch_norm(model)
    images = rng.uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict_on_batch(images), model.predict_on_batch(images), rtol=1e-4, atol=1e-4)
    inner = folded.get_layer(BACKBONE_LAYER)
    norms = [layer.name for layer in inner.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms == ["shared_bn"]  # its convolution's output is also read by the Add
    assert inner.get_layer("conv").use_bias and inner.get_layer("depthwise").use_bias


def test_a_pretrained_backbone_folded_gives_the_same_embeddings(weights_file):
    spec = create_model(MODEL, 3, SIZE, weights=str(weights_file))
    images = np.random.default_rng(1).uniform(0, 255, (2, *SIZE, 3)).astype("float32")
    np.testing.assert_allclose(fold_batch_norm(spec.features).predict_on_batch(images),
                               spec.features.predict_on_batch(images), atol=1e-3)


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_fine_tuning_fits_a_folded_bottom_and_checkpoints_the_classifier_with_its_optimizer(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=8)
    config = transfer_config(data, weights_file, epochs=2, fine_tune_blocks=2, fine_tune_epochs=2)
    with pytest.raises(KeyboardInterrupt):  # killed after the first fine-tuning epoch
        train(config, tmp_path / "run", verbose=0, callbacks=[_StopAfter(3)])
    result = train(config, tmp_path / "run", verbose=0, resume=True)

    assert len(result.history["val_accuracy"]) == 4
    checkpoint = result.run.checkpoint_dir / result.run.state()["model"]
    resumed = keras.saving.load_model(checkpoint)
    assert resumed.get_layer(BACKBONE_LAYER).get_layer("conv_pw_13").trainable
    steps_per_epoch = -(-len(result.run.split("train")) // config.batch_size)
    assert int(resumed.optimizer.iterations) == 2 * steps_per_epoch  # the optimizer's state crossed the kill
    # the stages the first process finished keep their times; each head epoch has its own (the first traces the graph)
    assert {"decode", "embeddings", "head", "fine_tune"} <= set(result.run.record("timings"))
    head_seconds = [float(row["seconds"]) for row in result.run.history_rows()[:2]]
    assert head_seconds[0] > head_seconds[1]


def test_the_fine_tuning_model_shares_the_trainable_weights_and_predicts_the_same(weights_file):
    classifier = create_model(MODEL, 3, SIZE, weights=str(weights_file)).classifier
    unfreeze_top_blocks(classifier, get_model_entry(MODEL).block_pattern, 2)
    fitted = fine_tuning_model(classifier)

    assert fitted is not classifier
    assert [id(w) for w in fitted.trainable_weights] == [id(w) for w in classifier.trainable_weights]
    norms = [layer for model in fitted.layers if isinstance(model, keras.Model) for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 4  # the two trainable blocks' own, left as they are: the frozen bottom's are folded
    images = np.random.default_rng(2).uniform(0, 255, (2, *SIZE, 3)).astype("float32")
    np.testing.assert_allclose(fitted.predict_on_batch(images), classifier.predict_on_batch(images), atol=1e-4)



class _Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.models = []

    def on_epoch_end(self, epoch, logs=None):
        self.models.append(self.model)


def test_fine_tuning_callbacks_run_on_the_classifier_and_early_stopping_stops_it(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=8)
    seen = _Seen()
    config = transfer_config(data, weights_file, epochs=2, fine_tune_blocks=1, fine_tune_epochs=4,
                             fine_tune_learning_rate=1e-12, early_stopping=1)  # fine-tuning cannot improve
    result = train(config, tmp_path / "run", verbose=0, callbacks=[seen])

    assert len(result.history["val_accuracy"]) == 3  # stopped after its first fine-tuning epoch
    fine_tuned = seen.models[-1]
    assert BACKBONE_LAYER in [layer.name for layer in fine_tuned.layers]
    fine_tuned.save(tmp_path / "from-a-callback.keras")  # a plain classifier: it loads
    assert keras.saving.load_model(tmp_path / "from-a-callback.keras").count_params() == fine_tuned.count_params()


def test_an_image_size_the_backbone_cannot_take_is_refused_naming_the_size_not_the_weights(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=4)
    with pytest.raises(ConfigError, match=r"image size 16x16 does not fit MobileNet \(Input size must be at least 32x32") as refused:
        train(transfer_config(data, weights_file, image_size=(16, 16)), tmp_path / "run", verbose=0)
    assert str(weights_file) not in str(refused.value)
    assert not (tmp_path / "run" / "config.json").exists()


def test_more_blocks_than_the_backbone_has_are_refused_before_training(tmp_path, weights_file):
    data = make_folder(tmp_path / "photos", per_class=4)
    with pytest.raises(ConfigError, match="--fine-tune-blocks 14: this backbone has 13 blocks"):
        train(transfer_config(data, weights_file, fine_tune_blocks=14), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "config.json").exists()
