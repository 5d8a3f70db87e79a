"""The tutorial's workflow through the `petal` command: data -> train -> export -> predict."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLASS_COLOURS, PETAL, make_folder, make_image
from PIL import Image

from petal.cli import main

SMALL = ["--image-size", "32", "32", "--batch-size", "8"]


def petal(*args, cwd=None):
    return subprocess.run([PETAL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small run, trained and exported through the CLI, shared by the tests below."""
    root = tmp_path_factory.mktemp("workflow")
    data = make_folder(root / "photos", per_class=12)
    run = root / "run"
    trained = petal("train", data, "--model", "tutorial", "--epochs", "2", "--out", run, "--cache-dir", root / "cache", *SMALL)
    exported = petal("export", run)
    return {"data": data, "run": run, "root": root, "train": trained, "export": exported}


def test_data_summarises_the_folder_and_saves_a_grid(tmp_path, image_folder):
    result = petal("data", image_folder, "--grid", tmp_path / "grid.png")
    assert result.returncode == 0, result.stderr
    assert "Found 30 files belonging to 3 classes." in result.stdout
    assert "Using 24 files for training and 6 for validation" in result.stdout
    assert Image.open(tmp_path / "grid.png").size[0] > 300


@pytest.mark.quick
def test_train_writes_a_complete_run_folder(trained_run):
    assert trained_run["train"].returncode == 0, trained_run["train"].stderr
    run = trained_run["run"]
    closing = trained_run["train"].stdout.splitlines()[-3:]  # total time and result, the report's path, the next command
    saved = json.loads((run / "validation.json").read_text())  # the saved model's: what export and evaluate report
    assert closing[0].startswith("Trained in ") and "(2 epochs)" in closing[0]
    took = re.search(r"took ((?:\d+ min )?\d+ s)", (run / "report.html").read_text()).group(1)
    assert closing[0].startswith(f"Trained in {took} ")  # the command and its report give one wall time
    assert f"validation accuracy {saved['accuracy']:.4f} on {saved['images']} photos" in closing[0]
    assert closing[1] == f"Run folder: {run}  (report: {run / 'report.html'})"
    assert closing[2] == f"Next: petal export {run}"
    for name in ("config.json", "labels.txt", "split/train.csv", "split/validation.csv", "history.csv",
                 "curves.png", "diagnosis.json", "samples.jpg", "model.keras", "checkpoint/state.json", "calibration.json",
                 "validation.json", "environment.json"):
        assert (run / name).exists(), name
    assert (run / "labels.txt").read_text().split() == sorted(CLASS_COLOURS)
    assert json.loads((run / "config.json").read_text())["image_size"] == [32, 32]
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert json.loads((run / "diagnosis.json").read_text())["verdict"]
    assert "Total params" in trained_run["train"].stdout  # the model summary
    assert "Diagnosis:" in trained_run["train"].stdout
    # a log (not a terminal): Keras's line per epoch, no progress bars, no second line of the same metrics
    assert "decoding:" not in trained_run["train"].stderr and "epoch 1 of 2" not in trained_run["train"].stderr
    assert trained_run["train"].stdout.count("val_accuracy:") == 2


@pytest.mark.quick
def test_export_writes_every_variant_and_prints_the_parity_table(trained_run):
    assert trained_run["export"].returncode == 0, trained_run["export"].stderr
    report = json.loads((trained_run["run"] / "export" / "report.json").read_text())
    assert [(v["variant"], v["images"], v["passed"]) for v in report["variants"]] == [
        ("float32", 7, True), ("float16", 7, True), ("dynamic", 7, True), ("int8", 7, True)]
    assert report["variants"][0]["max_abs_logit_diff"] <= 1e-3
    for variant in ("float32", "float16", "dynamic", "int8"):
        assert (trained_run["run"] / "export" / f"model-{variant}.tflite").exists()
        assert f"| {variant} |" in trained_run["export"].stdout
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" not in trained_run["export"].stderr


@pytest.mark.quick
def test_predict_prints_the_tutorials_sentence_and_top_three(trained_run, tmp_path):
    photo = make_image(tmp_path / "query.jpg", CLASS_COLOURS["red"], seed=7)
    for model in (trained_run["run"] / "export" / "model-float32.tflite", trained_run["run"]):
        result = petal("predict", model, photo)
        assert result.returncode == 0, result.stderr
        first, second = result.stdout.splitlines()[:2]
        assert first.startswith(f"{photo} most likely belongs to ")
        assert first.endswith(" percent confidence.")
        assert second.strip().startswith("top 3: ")


def test_tflite_and_run_folder_give_the_same_probabilities(trained_run, tmp_path):
    from petal.runtime.predict import Predictor

    photos = [make_image(tmp_path / f"{i}.png", colour, seed=i) for i, colour in enumerate(CLASS_COLOURS.values())]
    lite = list(Predictor.load(trained_run["run"] / "export" / "model-float32.tflite").predict(photos))
    full = list(Predictor.load(trained_run["run"]).predict(photos))
    assert [p.label for p in lite] == [p.label for p in full]
    np.testing.assert_allclose([p.probabilities for p in lite], [p.probabilities for p in full], atol=1e-5)


def test_predict_names_a_bad_file_and_still_predicts_the_rest(trained_run, tmp_path):
    good = make_image(tmp_path / "good.jpg", CLASS_COLOURS["blue"])
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is text")
    result = petal("predict", trained_run["run"] / "export" / "model-float32.tflite", bad, good)
    assert result.returncode == 1
    assert f"{bad}: not an image" in result.stderr
    assert f"{good} most likely belongs to" in result.stdout


@pytest.mark.quick
def test_predicting_from_tflite_does_not_import_tensorflow(trained_run, tmp_path):
    photo = make_image(tmp_path / "q.jpg", CLASS_COLOURS["green"])
    code = (
        "import sys; from petal.cli import main; rc = main(['predict', sys.argv[1], sys.argv[2]]);"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules);"
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(trained_run["run"] / "export" / "model-float32.tflite"), str(photo)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_exported_file_carries_labels_and_preprocessing_and_loads_in_a_plain_interpreter(trained_run):
    from ai_edge_litert.interpreter import Interpreter

    from petal.runtime.metadata import read_metadata

    path = trained_run["run"] / "export" / "model-float32.tflite"
    meta = read_metadata(path)
    assert meta["labels"] == sorted(CLASS_COLOURS)
    assert meta["preprocessing"]["image_size"] == [32, 32]
    assert meta["preprocessing"]["resize"] == "pillow-bilinear-antialias"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 32, 32, 3]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any("Flex" in op for op in ops)


def test_second_train_on_the_same_folder_decodes_nothing(tmp_path, image_folder, caplog):
    common = ["train", str(image_folder), "--model", "tutorial", "--epochs", "1", *SMALL]
    with caplog.at_level("INFO"):
        assert main(common + ["--out", str(tmp_path / "one")]) == 0
        assert "decoded 24 images, 0 read from the decode cache" in caplog.text
        caplog.clear()
        assert main(common + ["--out", str(tmp_path / "two")]) == 0
    assert "decoded 0 images, 24 read from the decode cache" in caplog.text
    assert "decoded 0 images, 6 read from the decode cache" in caplog.text


def test_unknown_model_is_one_line_and_exit_2(image_folder, tmp_path):
    result = petal("train", image_folder, "--model", "resnet-9000", "--out", tmp_path / "r")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("petal: error: unknown model; valid names: efficientnet-b0, ")
    assert line.endswith(", petal-resnet, tutorial, tutorial-augmented. Received: model='resnet-9000'")
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_is_not_overwritten(trained_run):
    before = (trained_run["run"] / "model.keras").read_bytes()
    result = petal("train", trained_run["data"], "--out", trained_run["run"], *SMALL)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--resume" in result.stderr
    assert (trained_run["run"] / "model.keras").read_bytes() == before


def test_undecodable_training_files_are_left_out_and_listed(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=8)
    (data / "red" / "zz_text.jpg").write_text("not an image")
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", "tutorial", "--epochs", "1", "--out", str(run), *SMALL]) == 0
    assert "red/zz_text.jpg" in (run / "skipped.csv").read_text()


def test_demo_runs_the_whole_workflow_on_the_bundled_sample(tmp_path):
    result = petal("demo", "--epochs", "1", "--fine-tune-epochs", "1", "--out", tmp_path / "demo-run", "--image-size", "48", "48")
    assert result.returncode == 0, result.stderr
    for step in ("== 1/4 data", "== 2/4 train", "== 3/4 export", "== 4/4 predict"):
        assert step in result.stdout
    assert re.search(r"^Trained in (\d+ min )?\d+ s \(2 epochs\): validation accuracy \d\.\d{4} on 60 photos", result.stdout, re.M)
    assert result.stdout.count("  top 3: ") == 3  # three predictions, each "most likely ..." or "not sure: ..."
    export = tmp_path / "demo-run" / "export"
    report = json.loads((export / "report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["float32", "float16", "dynamic", "int8"]
    for variant in report["variants"]:  # a one-epoch model is near chance: the gate may refuse a quantized file
        assert (export / f"model-{variant['variant']}.tflite").exists() == variant["passed"]
    assert report["variants"][0]["passed"]


@pytest.mark.parametrize("command", ["data", "models", "train", "export", "evaluate", "report", "serve", "predict", "demo"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: petal {command}" in capsys.readouterr().out


def test_shell_completion_is_made_from_the_parser_for_bash_and_zsh():
    for shell in ("bash", "zsh"):
        result = subprocess.run([PETAL, "completion", shell], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "--fine-tune-blocks" in result.stdout and "predict-batch" in result.stdout


def test_output_cut_short_by_the_reader_is_not_a_traceback():
    result = subprocess.run(f"{PETAL} completion bash | head -1", shell=True, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("#") and "Traceback" not in result.stderr
