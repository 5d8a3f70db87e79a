"""`petal evaluate`: per-class metrics, confusion, calibration and mistakes, for Keras and LiteRT alike."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLASS_COLOURS, exported_tiny_run, make_folder, make_image

from petal.errors import DataError
from petal.training.evaluation import evaluate, write_evaluation


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    return exported_tiny_run(tmp_path_factory.mktemp("evaluate"))


def test_the_run_folder_and_its_tflite_give_the_same_numbers(exported_run):
    keras = evaluate(exported_run)
    lite = evaluate(exported_run / "export" / "model-float32.tflite")
    assert keras.images == lite.images == 7
    assert keras.confusion == lite.confusion
    assert abs(keras.accuracy - lite.accuracy) <= 0.005
    assert sum(sum(row) for row in keras.confusion) == 7
    assert set(keras.per_class) == set(CLASS_COLOURS)


def test_metrics_follow_from_the_confusion_matrix(exported_run, tmp_path):
    result = evaluate(exported_run)
    confusion = np.array(result.confusion)
    for c, name in enumerate(result.class_names):
        assert result.per_class[name]["support"] == confusion[c].sum()
    assert result.accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
    assert result.top_k_accuracy >= result.accuracy
    assert 0.0 <= result.expected_calibration_error <= 1.0
    written = write_evaluation(result, tmp_path / "out", result.data)
    assert {p.name for p in written} >= {"metrics.json", "mistakes.csv", "confusion.png", "reliability.png"}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["images"] == 7


def test_the_most_confident_mistakes_come_first(tmp_path, exported_run):
    # Red photos filed under "blue": the model calls them red, confidently.
    data = tmp_path / "mislabelled"
    for name, colour in CLASS_COLOURS.items():
        make_image(data / name / "ok.png", colour, seed=1)
    for i in range(3):
        make_image(data / "blue" / f"actually_red_{i}.png", CLASS_COLOURS["red"], seed=50 + i)
    result = evaluate(exported_run, data, mistakes=2)
    assert len(result.mistakes) == 2
    assert [m.confidence for m in result.mistakes] == sorted((m.confidence for m in result.mistakes), reverse=True)
    assert all(m.true == "blue" and m.path.startswith("blue/actually_red_") for m in result.mistakes)


def test_a_folder_whose_classes_differ_from_the_models_is_a_clear_error(exported_run, tmp_path):
    data = make_folder(tmp_path / "other", per_class=2)
    (data / "red").rename(data / "purple")
    with pytest.raises(DataError, match="unknown: purple; missing: red"):
        evaluate(exported_run, data)


def test_a_data_folder_that_is_not_there_is_one_line_naming_it_before_the_model_loads(exported_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "petal", "evaluate", str(exported_run), "--data", "nonexist"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == f"petal: error: {tmp_path / 'nonexist'}: not a folder (expected DIR/<class name>/<image files>, one sub-folder per class)\n"


def test_evaluating_a_tflite_does_not_import_tensorflow(exported_run, tmp_path):
    code = (
        "import sys; from petal.cli import main; rc = main(['evaluate', sys.argv[1], '--out', sys.argv[2]]);"
        "print('HEAVY', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(exported_run / "export" / "model-float32.tflite"), str(tmp_path / "e")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "precision  recall" in result.stdout
    assert (tmp_path / "e" / "confusion.png").exists()


def test_an_evaluation_on_other_data_keeps_its_own_folder_and_warns_about_training_photos(exported_run, caplog):
    from petal.training.evaluation import default_output

    config = json.loads((exported_run / "config.json").read_text())
    reused = evaluate(exported_run, config["data_dir"])  # the very folder it trained on
    assert reused.training_photos == 29  # every photo of the training split is in it
    assert "29 of the 36 photos in" in caplog.text and "are training photos of this model" in caplog.text
    assert evaluate(exported_run).training_photos == 0  # the validation split: nothing to warn about
    assert default_output(exported_run) == exported_run / "evaluation" / "keras"
    assert default_output(exported_run, config["data_dir"]) == exported_run / "evaluation" / "keras-on-photos"
    tflite = exported_run / "export" / "model-float32.tflite"
    assert default_output(tflite, "/data/new") == exported_run / "evaluation" / "model-float32-on-new"
