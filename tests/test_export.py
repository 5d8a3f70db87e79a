"""The LiteRT variants and the parity gate that decides which of them may be deployed."""

import json

import numpy as np
import pytest
from conftest import CLASS_COLOURS, make_folder, make_image

from petal.cli import main
from petal.config import ExportConfig, TrainConfig
from petal.errors import ConfigError
from petal.runtime.metadata import read_metadata
from petal.runtime.predict import Predictor
from petal.training.export import export_litert
from petal.training.loop import train

VARIANTS = ("float32", "float16", "dynamic", "int8")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_folder(root / "photos", per_class=20)
    config = TrainConfig(str(data), model="tutorial", epochs=3, batch_size=8, image_size=(32, 32), cache_dir=str(root / "cache"))
    return train(config, root / "run", verbose=0).run.path


def test_every_variant_is_compared_with_keras_on_the_whole_validation_split(trained_run):
    report = export_litert(trained_run)

    assert [v.variant for v in report.variants] == list(VARIANTS)
    assert all(v.images == 12 and v.passed for v in report.variants)
    sizes = {v.variant: v.file_bytes for v in report.variants}
    assert sizes["int8"] <= 0.3 * sizes["float32"] and sizes["float16"] < sizes["float32"]
    assert all(set(v.speed.latency_ms) == {1, 2} and min(v.speed.images_per_second.values()) > 0 for v in report.variants)
    written = json.loads((trained_run / "export" / "report.json").read_text())
    assert [v["variant"] for v in written["variants"]] == list(VARIANTS)
    assert "| int8 |" in (trained_run / "export" / "report.md").read_text()
    assert (trained_run / "export" / "labels.txt").read_text() == (trained_run / "labels.txt").read_text()  # for other runtimes
    calibration = (trained_run / "export" / "calibration.csv").read_text().splitlines()
    validation = set((trained_run / "split" / "validation.csv").read_text().splitlines()[1:])
    assert len(calibration) == 1 + 48 and not validation & set(calibration[1:])  # training images only


def test_each_file_carries_labels_and_its_own_preprocessing_and_loads_in_a_plain_interpreter(trained_run):
    from ai_edge_litert.interpreter import Interpreter

    export_litert(trained_run, ExportConfig(variants=("float16", "int8"), int8_io="uint8"))
    for variant, dtype in (("float16", "float32"), ("int8", "uint8")):
        path = trained_run / "export" / f"model-{variant}.tflite"
        meta = read_metadata(path)
        assert meta["labels"] == sorted(CLASS_COLOURS) and meta["variant"] == variant
        assert meta["preprocessing"]["image_size"] == [32, 32]
        assert meta["preprocessing"]["input_dtype"] == dtype
        assert meta["preprocessing"]["value_range"] == [0, 255]
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        assert interpreter.get_input_details()[0]["dtype"] == np.dtype(dtype)


def test_an_integer_only_model_predicts_what_keras_predicts(trained_run, tmp_path):
    export_litert(trained_run, ExportConfig(variants=("int8",), int8_io="int8"))
    photos = [make_image(tmp_path / f"{name}.png", colour, seed=9) for name, colour in CLASS_COLOURS.items()]
    lite = Predictor.load(trained_run / "export" / "model-int8.tflite").predict(photos)
    keras = Predictor.load(trained_run).predict(photos)
    assert [p.label for p in lite] == [p.label for p in keras] == list(CLASS_COLOURS)


def test_the_report_counts_the_images_that_calibrated_int8_not_the_number_asked_for(trained_run):
    training_images = len((trained_run / "split" / "train.csv").read_text().splitlines()) - 1  # fewer than the 300 asked

    report = export_litert(trained_run, ExportConfig(variants=("int8",)))

    assert report.config["calibration_images"] == 300
    assert report.calibrated_on == training_images == len((trained_run / "export" / "calibration.csv").read_text().splitlines()) - 1


def test_the_gate_rejects_an_int8_model_calibrated_on_constant_images(trained_run, capsys):
    black = np.zeros((50, 32, 32, 3), np.uint8)

    report = export_litert(trained_run, ExportConfig(variants=("float32", "int8")), calibration_images=black)

    int8 = report.variants[1]
    assert not int8.passed and "points below Keras" in int8.failure
    assert not (trained_run / "export" / "model-int8.tflite").exists()
    assert int8.path == str(trained_run / "export" / "rejected" / "model-int8.tflite")
    assert report.variants[0].passed and (trained_run / "export" / "model-float32.tflite").exists()


def test_export_exits_non_zero_when_a_variant_fails_the_gate_unless_told_not_to_gate(trained_run, capsys, monkeypatch):
    from petal.training import parity

    command = ["export", str(trained_run), "--quantize", "float32"]
    assert main(command) == 0
    monkeypatch.setattr(parity, "gate_failure", lambda report, config: "failed on purpose")

    assert main(command) == 1
    assert "float32 failed the parity gate" in capsys.readouterr().err
    assert not (trained_run / "export" / "model-float32.tflite").exists()

    assert main(command + ["--no-gate"]) == 0
    assert (trained_run / "export" / "model-float32.tflite").exists()


@pytest.mark.parametrize("changes", [{"variants": ("float64",)}, {"variants": ()}, {"int8_io": "uint16"},
                                     {"calibration_images": 0}, {"threads": (0,)}])
def test_export_config_refuses_nonsense(changes):
    with pytest.raises(ConfigError):
        ExportConfig(**changes)


def test_the_demo_notes_a_variant_that_fails_the_gate_without_calling_it_an_error(trained_run, capsys, monkeypatch):
    from petal.cli.commands import export_and_report
    from petal.training import parity

    monkeypatch.setattr(parity, "gate_failure", lambda report, config: "failed on purpose" if report.variant == "int8" else None)

    assert export_and_report(trained_run, ExportConfig(variants=("float32", "int8")), gate_failure_is_error=False) == 0
    out, err = capsys.readouterr()
    assert "Note: int8 failed the parity gate" in out and "error" not in err
    assert (trained_run / "export" / "model-float32.tflite").exists()



def test_export_labels_keep_a_class_name_with_a_carriage_return_on_one_line(tmp_path):
    from petal.run_folder import RunFolder

    run = RunFolder(tmp_path / "run")
    run.export_dir.mkdir(parents=True)
    run.labels_path.write_bytes(b"bl ue\ngreen\nre\rd\n")  # labels.txt as training writes it: one name a line

    run.write_export_report({"variants": []}, "")

    assert (run.export_dir / "labels.txt").read_bytes() == b"bl ue\ngreen\nre\rd\n"


def test_export_json_with_a_variant_failing_the_gate_still_says_so_in_one_line(trained_run, capsys, monkeypatch):
    from petal.training import parity

    monkeypatch.setattr(parity, "gate_failure", lambda report, config: "failed on purpose")

    assert main(["export", str(trained_run), "--quantize", "float32", "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["variants"][0]["passed"] is False
    assert "petal: error: float32 failed the parity gate" in err


def test_the_recommended_model_is_the_fastest_at_one_thread_of_those_that_passed(tmp_path):
    from petal.run_folder import RunFolder

    def variant(name, passed, one_thread_ms, two_threads_ms):
        return {"variant": name, "path": f"model-{name}.tflite", "passed": passed,
                "speed": {"latency_ms": {"1": one_thread_ms, "2": two_threads_ms}}}

    run = RunFolder(tmp_path / "run")
    run.export_dir.mkdir(parents=True)
    (run.export_dir / "report.json").write_text(json.dumps({"images": 7, "keras_accuracy": 1.0, "keras_file_bytes": 1, "variants": [
        variant("float16", True, 5.69, 2.90), variant("int8", True, 5.33, 3.10), variant("dynamic", False, 4.0, 2.0)]}))
    assert run.recommended_model() == "model-int8.tflite"  # not float16, the fastest at two threads
