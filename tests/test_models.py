import numpy as np
import pytest

from petal.errors import ConfigError
from petal.registry import DEFAULT_MODEL, create_model, get_model_entry, list_models
from petal.training.augment import tutorial_layers
from petal.training.models.flip_average import with_test_time_flip


def test_tutorial_model_has_the_tutorials_parameter_count():
    spec = create_model("tutorial", num_classes=5, image_size=(180, 180))
    assert spec.classifier.count_params() == 3_989_285


def test_tutorial_augmented_adds_dropout_but_no_parameters_and_trains_with_the_tutorials_augmentation():
    spec = create_model("tutorial-augmented", num_classes=5, image_size=(180, 180))
    assert spec.classifier.count_params() == 3_989_285
    assert spec.classifier.get_layer("dropout").rate == 0.2
    assert get_model_entry("tutorial-augmented").recipe == {"augmentation": "tutorial"}
    assert [layer.__class__.__name__ for layer in tutorial_layers().layers] == ["RandomFlip", "RandomRotation", "RandomZoom"]


def test_petal_resnet_the_from_scratch_model_is_small_enough_for_a_two_megabyte_tflite():
    model = create_model("petal-resnet", num_classes=5, image_size=(128, 128)).classifier
    assert model.count_params() * 4 < 2_000_000
    assert not any(layer.__class__.__name__ in ("Dense", "Flatten") and layer.name != "logits" for layer in model.layers)


@pytest.mark.parametrize("name", [entry.name for entry in list_models()])
def test_every_registered_model_maps_images_to_logits(name):
    spec = create_model(name, num_classes=3, image_size=(32, 32), weights=None)
    logits = np.asarray(spec.classifier(np.full((2, 32, 32, 3), 128.0, np.float32), training=False))
    assert logits.shape == (2, 3)
    assert np.isfinite(logits).all()


def test_unknown_model_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"valid names: .*petal-resnet, tutorial, tutorial-augmented.*Did you mean 'tutorial-augmented'\?"):
        create_model("tutorial-augment", 5, (180, 180))


def test_default_model_is_registered():
    assert DEFAULT_MODEL in [entry.name for entry in list_models()]


def test_list_models_filters_by_pattern():
    assert [e.name for e in list_models("*augmented")] == ["tutorial-augmented"]


def test_test_time_flip_averages_each_image_with_its_mirror_image_at_inference_only():
    classifier = create_model("petal-resnet", 3, (32, 32)).classifier
    model = with_test_time_flip(classifier)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = (classifier(images, training=False) + classifier(images[:, :, ::-1], training=False)) / 2
    np.testing.assert_allclose(model(images, training=False), expected, atol=1e-5)
    np.testing.assert_allclose(model(images, training=True), classifier(images, training=True), atol=1e-5)
    assert model.count_params() == classifier.count_params()
