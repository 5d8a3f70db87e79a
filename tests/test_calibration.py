"""Calibrated confidence and "not sure": the temperature and threshold fitted on the validation split travel
with the model (run folder and .tflite) and every way of predicting reports them."""

import numpy as np
import pytest
from conftest import exported_tiny_run
from PIL import Image

from petal.errors import ModelFileError
from petal.run_folder import RunFolder
from petal.runtime.calibration import Calibration, calibrate, choose_threshold, fit_temperature
from petal.runtime.metadata import read_metadata
from petal.runtime.predict import Predictor


def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 5))
    true_temperature = 2.5
    probabilities = Calibration(true_temperature).probabilities(logits)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in probabilities.astype(np.float64)])
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_the_threshold_is_the_lowest_confidence_that_keeps_the_target_precision():
    confidence = np.array([0.99, 0.95, 0.90, 0.80, 0.70, 0.60, 0.50])
    correct = np.array([True, True, True, True, False, True, False])
    assert choose_threshold(confidence, correct, target=1.0) == 0.80  # 4 of 4 right at >= 0.80
    assert choose_threshold(confidence, correct, target=0.8) == 0.60  # 5 of 6 at >= 0.60
    assert choose_threshold(confidence, np.zeros(7, bool), target=0.5) == 1.0  # never precise enough: never sure


def test_images_tied_at_the_threshold_are_all_sure_or_all_not():
    confidence = np.array([0.9, 0.7, 0.7, 0.5])
    correct = np.array([True, True, False, True])
    assert choose_threshold(confidence, correct, target=0.9) == 0.9


def test_a_prediction_below_the_threshold_says_not_sure_with_its_top_two():
    calibration = Calibration(temperature=1.0, threshold=0.6)
    predictor = Predictor(lambda batch: np.tile([[1.0, 0.5, 0.0]], (len(batch), 1)).astype(np.float32), ("roses", "tulips", "daisy"),
                          (8, 8), calibration=calibration)
    (result,) = predictor.predict([Image.new("RGB", (8, 8))])
    assert not result.sure and result.label == "roses"
    assert result.sentence() == "<image>: not sure: roses 50.65%, tulips 30.72%"


def test_a_damaged_calibration_is_one_error_naming_the_file():
    with pytest.raises(ModelFileError, match=r"model.tflite: calibration temperature must be a number in 0.018"):
        Calibration.from_dict({"temperature": -1.0, "threshold": 0.5}, "model.tflite")
    assert Calibration.from_dict(None) == Calibration()  # exported before calibration existed: always sure


def test_training_fits_the_calibration_and_the_tflite_carries_it(tmp_path):
    run = RunFolder(exported_tiny_run(tmp_path))
    recorded = run.record("calibration")
    assert recorded["temperature"] > 0 and 0 <= recorded["threshold"] <= 1 and recorded["images"] == len(run.split("validation").paths)
    tflite = run.export_dir / "model-float32.tflite"
    assert read_metadata(tflite)["calibration"] == recorded
    from_file, from_run = Predictor.load(tflite).calibration, Predictor.load(run.path).calibration
    assert from_file == from_run == Calibration.from_dict(recorded)


def test_calibrate_reports_coverage_and_accuracy_when_sure():
    logits = np.tile(np.array([[4.0, 0.0], [3.0, 0.0], [0.2, 0.0], [0.1, 0.0]]), (8, 1))  # 32 images: enough to calibrate
    calibration = calibrate(logits, np.tile([0, 0, 1, 0], 8), target=1.0)
    assert calibration.coverage == 0.5 and calibration.accuracy_when_sure == 1.0


def test_by_default_sure_predictions_make_half_the_mistakes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), labels] += rng.uniform(0, 4, 2000)  # right more often the larger the margin
    calibration = calibrate(logits, labels)
    accuracy = float((logits.argmax(1) == labels).mean())
    assert calibration.target_precision == pytest.approx(1 - (1 - accuracy) / 2, abs=1e-6)
    assert calibration.accuracy_when_sure >= calibration.target_precision and 0 < calibration.coverage < 1
    assert calibration.calibrated


def test_too_few_validation_images_leave_the_model_uncalibrated_and_say_so():
    calibration = calibrate(np.zeros((24, 3)), np.zeros(24))
    assert not calibration.calibrated and calibration.is_sure(0.0) and calibration.temperature == 1.0


@pytest.mark.parametrize("values", [{"temperature": "2", "threshold": 0.5}, {"temperature": 1e-320, "threshold": 0.5},
                                    {"temperature": 1e308, "threshold": 0.5}, {"temperature": 1.0, "threshold": "0.5"},
                                    {"temperature": 1.0, "threshold": 5}, {"temperature": 1.0}, [1.0, 0.5], "calibrated",
                                    {"temperature": 1.0, "threshold": 0.5, "coverage": "abc"}, {"temperature": True, "threshold": 0.5}])
def test_a_calibration_a_fit_cannot_give_is_refused_in_one_line(values):
    with pytest.raises(ModelFileError, match=r"^model.tflite: "):
        Calibration.from_dict(values, "model.tflite")


def test_too_few_validation_images_are_not_calibrated_to_noise():
    calibration = calibrate(np.array([[3.0, 0.0]] * 5), np.array([1, 1, 1, 1, 1]))
    assert (calibration.temperature, calibration.threshold, calibration.images) == (1.0, 0.0, 5)


def test_too_few_validation_images_for_a_calibration_say_so(caplog):
    logits = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    calibration = calibrate(logits, np.arange(10) % 3)
    assert calibration.temperature == 1.0 and calibration.threshold == 0.0
    assert "only 10 validation images (calibration needs 25)" in caplog.text
